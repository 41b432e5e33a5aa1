"""Alert rules: recipients once each, the minimum interval only for low balance."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import msgspec

from contracts.invoicing import InvoiceOverdue
from contracts.subjects import INVOICING_OVERDUE
from invoicing_service.alerts.domain import (
    balance_low_alert,
    held_back,
    past_due_alert,
    recipients,
)
from invoicing_service.alerts.messaging import alert_for

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_recipients_are_the_billing_email_then_the_extras_each_once() -> None:
    assert recipients("ops@acme.example", ("cfo@acme.example", "OPS@acme.example")) == (
        "ops@acme.example", "cfo@acme.example")
    assert recipients(None, ()) == ()
    assert len(recipients(None, tuple(f"u{n}@acme.example" for n in range(30)))) == 20


def test_only_low_balance_is_held_back_within_the_interval() -> None:
    assert held_back("balance_low", T0, T0 + 30 * timedelta(minutes=1), HOUR)
    assert not held_back("balance_low", T0, T0 + HOUR, HOUR)
    assert not held_back("balance_low", None, T0, HOUR)
    assert not held_back("renewal_past_due", T0, T0, HOUR)


def test_an_alert_is_keyed_by_its_kind_and_source_event() -> None:
    account = uuid4()
    low = balance_low_alert(account, "balance_low:a:7", "1.50", "5.00", "GBP")
    due = past_due_alert(account, "recurring.past_due:i:2026-12", "vmn", "+447700900123",
                         "2026-12", T0 + 7 * 24 * HOUR)
    assert low.email_key == "alert:balance_low:balance_low:a:7"
    assert due.email_key == "alert:renewal_past_due:recurring.past_due:i:2026-12"
    assert "number +447700900123" in due.text_body and "08 December 2026" in due.text_body


def test_an_overdue_invoice_becomes_an_invoice_overdue_alert() -> None:
    account = uuid4()
    message = msgspec.json.encode(InvoiceOverdue(
        event_id="overdue:inv-1", invoice_id="inv-1", number="INV-2026-000001",
        account_id=account, currency="GBP", amount_due="120.00", due_at=T0, occurred_at=T0))
    alert = alert_for(INVOICING_OVERDUE, message)
    assert alert is not None and alert.kind == "invoice_overdue"
    assert alert.subject == "Invoice INV-2026-000001 is overdue"
    assert "GBP 120.00" in alert.text_body
    assert alert_for("invoicing.v1.issued", b"{}") is None
