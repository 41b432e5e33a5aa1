"""Statement entries of each event type: kind, signed amount, balance after, text, order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from ledger_service.domain import BillingAccount, UsageLine, debit_refs_of
from ledger_service.projections.statement import (
    DESCRIPTION_LENGTH_MAX,
    LINES_PER_EVENT_MAX,
    entry_seq,
    statement_entries,
)
from ledger_service.publisher import messages_for

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
POUND = 1_000_000


def entries_of(account: BillingAccount) -> list[tuple[str, int, int]]:
    return [(e.kind, e.amount_micros, e.balance_after_micros)
            for event in account.collect_events() for e in statement_entries(event)]


def test_each_money_event_is_one_entry_with_the_balance_it_left() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.purchase_credit("p1", "stripe", 10 * POUND, "GBP", T0, reference="pi_1")
    account.grant("g1", "bonus", 2 * POUND, T0, expires_at=T0 + timedelta(days=1),
                  reason="welcome", actor="ops@example")
    account.adjust("a1", "debit", POUND, "correction of a duplicate", "ops@example", T0)
    account.reverse_payment("p1", "stripe", 3 * POUND, T0, reason="chargeback")
    account.expire_grants(T0 + timedelta(days=2))
    assert entries_of(account) == [
        ("topup", 10 * POUND, 10 * POUND), ("grant", 2 * POUND, 12 * POUND),
        ("adjustment", -POUND, 11 * POUND), ("payment_refund", -3 * POUND, 8 * POUND),
        ("grant_expiry", -POUND, 7 * POUND),
    ]


def test_usage_lines_are_entries_and_holds_are_not() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.purchase_credit("p1", "stripe", POUND, "GBP", T0)
    account.authorize("h1", "r1", "sms", 2, 39_500, T0 + timedelta(minutes=5), T0)
    account.authorize("h2", "r2", "sms", 1, 39_500, T0 + timedelta(minutes=5), T0)
    account.record_usage([
        UsageLine("m1", "sms", 2, 39_500, "submitted", T0, hold_id="h1", reference="cmp-7"),
        UsageLine("m2", "sms", 1, 39_500, "failed", T0, hold_id="h2"),  # releases, bills nothing
        UsageLine("m3", "rcs_basic", 1, 37_000, "submitted", T0),
    ], T0)
    events = list(account.collect_events())
    usage = [e for event in events for e in statement_entries(event) if e.kind == "usage"]
    assert [(e.line, e.amount_micros, e.balance_after_micros) for e in usage] == [
        (0, -79_000, 921_000), (2, -37_000, 884_000)]
    assert usage[0].description == "sms x 2 at 0.0395"
    assert usage[0].reference == "cmp-7" and usage[0].hold_id == "h1"
    assert usage[0].currency == "GBP" and usage[0].occurred_at.endswith("Z")
    assert not [e for event in events if type(event).__name__ == "HoldPlaced"
                for e in statement_entries(event)]


def test_a_refund_is_the_balance_it_gives_back_and_names_what_it_refunds() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.purchase_credit("p1", "stripe", POUND, "GBP", T0)
    account.record_usage([UsageLine("m1", "sms", 10, 39_500, "submitted", T0)], T0)
    [debit] = [ref for event in account.collect_events() for ref in debit_refs_of(event)]
    account.refund("r1", debit, 100_000, "carrier fault", "ops@example", T0)
    [refund] = [e for event in account.collect_events() for e in statement_entries(event)]
    assert (refund.kind, refund.amount_micros, refund.balance_after_micros) == \
        ("refund", 100_000, 705_000)
    assert refund.description == f"Refund of entry {debit.entry_id}: carrier fault"
    assert refund.actor == "ops@example"


def test_an_invoice_payment_is_its_own_kind_and_the_publisher_says_the_same() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="postpay",
                                  credit_limit_micros=50 * POUND)
    account.record_usage([UsageLine("m1", "sms", 100, 39_500, "submitted", T0)], T0)
    account.purchase_credit("inv-pay", "stripe", 3_950_000, "GBP", T0, purpose="invoice")
    events = list(account.collect_events())
    entries = [e for event in events for e in statement_entries(event)]
    assert [(e.kind, e.balance_after_micros) for e in entries] == [
        ("usage", -3_950_000), ("invoice_payment", 0)]
    published = [m for event in events for subject, _, m in messages_for(event, "GBP")
                 if subject.endswith("entry_posted")]
    assert [(m.entry_id, m.kind, m.amount) for m in published] == [  # type: ignore[attr-defined]
        (e.entry_id, e.kind, f"{e.amount_micros / POUND:.2f}") for e in entries]


def test_descriptions_are_bounded() -> None:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.adjust("a1", "credit", POUND, "x" * 500, "ops@example", T0)
    [entry] = [e for event in account.collect_events() for e in statement_entries(event)]
    assert len(entry.description) == DESCRIPTION_LENGTH_MAX and entry.description.endswith("…")


def test_entry_order_is_the_log_position_then_the_line() -> None:
    assert entry_seq(7, 0) < entry_seq(7, 4_999) < entry_seq(8, 0)
    with pytest.raises(ValueError):
        entry_seq(7, LINES_PER_EVENT_MAX)
