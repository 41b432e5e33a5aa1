"""Settings of the invoicing service: the kernel's, plus the supplier printed on documents,
the billing scheduler and the overdue sweeper. Read from NAME or INVOICING_<NAME>."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from invoicing_service.recurring.settings import RecurringSettings
from services.settings import SettingsError

DEVELOPMENT_SUPPLIER_VAT_NUMBER: Final = "GB000000000"

Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class InvoicingSettings(RecurringSettings, frozen=True, kw_only=True):
    # Who issues the invoices (HMRC: the supplier's name, address and VAT number).
    supplier_name: str = "Billing Ledger Development Ltd"
    # Lines of the supplier's postal address, separated by "|".
    supplier_address: str = "1 Example Street|London|EC1A 1AA"
    supplier_country: str = "GB"
    supplier_vat_number: str = DEVELOPMENT_SUPPLIER_VAT_NUMBER
    supplier_email: str | None = None
    # On: the previous month's billing run is requested when a month begins (checked every
    # billing_schedule_check_s; a run per period is idempotent, so checking often is harmless).
    billing_schedule_enabled: bool = False
    billing_schedule_check_s: Seconds = 3_600.0
    billing_run_page_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    overdue_sweep_interval_s: Seconds = 300.0
    outbox_poll_interval_s: Seconds = 1.0

    @property
    def supplier_address_lines(self) -> list[str]:
        return [part.strip() for part in self.supplier_address.split("|") if part.strip()]

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        if self.is_production and self.supplier_vat_number == DEVELOPMENT_SUPPLIER_VAT_NUMBER:
            raise SettingsError("APP_ENV=production needs SUPPLIER_VAT_NUMBER: an invoice must "
                                "show the supplier's own VAT registration number")
