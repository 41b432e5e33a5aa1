"""Settings of recurring charges and alerts, read at start-up like every other setting.

`RecurringSettings` extends the mailer's settings; the invoicing service's own settings class
derives from it (at merge: `class InvoicingSettings(RecurringSettings)`), so LEDGER_URL,
RECURRING_GRACE_DAYS, ... (or INVOICING_LEDGER_URL, ...) are validated once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import msgspec

from invoicing_service.mail.settings import MailSettings
from services.settings import SettingsError


class RecurringSettings(MailSettings, frozen=True, kw_only=True):
    # The ledger's HTTP API, which prices and records every charge.
    ledger_url: str = "http://127.0.0.1:8001"
    ledger_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0
    # Attempts at one charge within one renewal run (back-off between them); a charge still
    # failing stays pending and is tried again on a later run.
    ledger_attempts_max: Annotated[int, msgspec.Meta(ge=1, le=20)] = 4
    ledger_retry_initial_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.2
    ledger_retry_max_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    # The scheduler: how often it looks for due renewals, how many items one transaction
    # takes, how many ledger calls are in flight at once.
    recurring_scheduler: bool = True
    recurring_poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    recurring_batch_size_max: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200
    recurring_concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    # A past-due item is retried on each top-up and at least this often; suspended after
    # the grace.
    recurring_retry_interval_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 86400.0
    recurring_grace_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 7
    # Shifts the scheduler's clock (tests, demos: "it is the 1st of next month"); 0 in
    # production. POST /v1/recurring-runs with as_of needs RECURRING_MANUAL_CLOCK=true.
    recurring_clock_offset_s: Annotated[float, msgspec.Meta(ge=-10 * 365 * 86400,
                                                            le=10 * 365 * 86400)] = 0.0
    recurring_manual_clock: bool = False
    # At most one alert email of a kind per account within this interval (besides "once per
    # source event"): a flapping balance does not flood an inbox.
    alert_min_interval_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 3600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ledger_retry_initial_s > self.ledger_retry_max_s:
            raise SettingsError("LEDGER_RETRY_INITIAL_S must not exceed LEDGER_RETRY_MAX_S")

    @property
    def grace(self) -> timedelta:
        return timedelta(days=self.recurring_grace_days)

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        if self.is_production and (self.recurring_manual_clock
                                   or self.recurring_clock_offset_s):
            raise SettingsError("APP_ENV=production runs renewals on the real clock: unset"
                                " RECURRING_MANUAL_CLOCK and RECURRING_CLOCK_OFFSET_S")
        if self.jwt_jwks_url is not None and self.jwt_service_secret is None:
            # The ledger accepts the identity provider's keys and the services' own secret:
            # renewals charge the ledger with a token signed by the latter.
            raise SettingsError("JWT_JWKS_URL is set: renewals need JWT_SERVICE_SECRET (the"
                                " same on the ledger) to sign their calls to the ledger")
