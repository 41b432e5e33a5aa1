"""Settings of the ledger service: the kernel's, plus the lag its followers may reach."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ledger_service.lag import LAG_ALERT_S_DEFAULT
from services.settings import ServiceSettings


class LedgerSettings(ServiceSettings, frozen=True, kw_only=True):
    """Read from LAG_ALERT_S (or LEDGER_LAG_ALERT_S), besides the kernel's variables."""

    # GET /v1/health/lag answers 503 once a follower's oldest waiting event is this old.
    lag_alert_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = LAG_ALERT_S_DEFAULT
