"""Billing periods, run and invoice ids, document numbers and the service's settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from invoicing_service.app.billing import check_billable, invoice_id_for, previous_period
from invoicing_service.app.customers import period_of
from invoicing_service.domain import errors
from invoicing_service.domain.numbering import document_number, sequence_of, series_of
from invoicing_service.settings import InvoicingSettings
from services.runtime import load
from services.settings import SettingsError


def test_a_run_bills_only_a_finished_month() -> None:
    now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    check_billable("2026-11", now)
    for period in ("2026-12", "2027-01"):
        with pytest.raises(errors.PeriodNotBillable):
            check_billable(period, now)


def test_the_scheduler_bills_the_previous_month_across_a_year_end() -> None:
    assert previous_period(datetime(2027, 1, 1, 0, 5, tzinfo=UTC)) == "2026-12"
    assert previous_period(datetime(2026, 11, 1, tzinfo=UTC)) == "2026-10"


def test_usage_belongs_to_the_utc_month_it_occurred_in() -> None:
    from datetime import timedelta, timezone

    late_evening_in_new_york = datetime(2026, 10, 31, 21, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert period_of(late_evening_in_new_york) == "2026-11"


def test_an_invoice_id_is_the_same_for_the_same_run_account_and_currency() -> None:
    account = uuid.uuid4()
    assert invoice_id_for("run-2026-10", account, "GBP") == invoice_id_for("run-2026-10", account, "GBP")
    assert invoice_id_for("run-2026-10", account, "GBP") != invoice_id_for("run-2026-10", account, "EUR")
    assert invoice_id_for("run-2026-10", account, "GBP") != invoice_id_for("run-2026-11", account, "GBP")


def test_document_numbers_are_per_kind_and_year() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    assert document_number(series_of("INV", at), 123) == "INV-2026-000123"
    assert document_number(series_of("CN", at), 1) == "CN-2026-000001"
    assert sequence_of("INV-2026-000123") == ("INV-2026", 123)
    with pytest.raises(ValueError, match="exhausted"):
        document_number("INV-2026", 1_000_000)


def test_production_refuses_the_development_supplier_vat_number() -> None:
    from invoicing_service.main import SPEC

    env = {"DATABASE_URL": "postgresql://x@localhost/db", "NATS_URL": "nats://localhost:4222",
           "APP_ENV": "production", "JWT_SECRET": "s" * 40}
    with pytest.raises(SettingsError, match="SMTP_HOST"):  # invoices must be emailed
        load(SPEC, env)
    env |= {"SMTP_HOST": "smtp.example.com", "MAIL_FROM": "invoices@example.com"}
    with pytest.raises(SettingsError, match="SUPPLIER_VAT_NUMBER"):
        load(SPEC, env)
    settings = load(SPEC, {**env, "SUPPLIER_VAT_NUMBER": "GB123456789"})
    assert isinstance(settings, InvoicingSettings)
    assert settings.supplier_vat_number == "GB123456789"


def test_with_jwks_renewals_need_the_service_secret_to_sign_their_calls_to_the_ledger() -> None:
    from invoicing_service.main import SPEC

    env = {"DATABASE_URL": "postgresql://x@localhost/db", "NATS_URL": "nats://localhost:4222",
           "JWT_JWKS_URL": "https://idp.example.com/.well-known/jwks.json"}
    with pytest.raises(SettingsError, match="JWT_SERVICE_SECRET"):
        load(SPEC, env)
    settings = load(SPEC, {**env, "JWT_SERVICE_SECRET": "v" * 40})
    assert isinstance(settings, InvoicingSettings)
    assert settings.service_token_secret == "v" * 40
