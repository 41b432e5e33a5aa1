"""Usage intake: batching, billing basis, overdraw and the balance signals."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4, uuid5

import pytest

from ledger_service.domain import BillingAccount, InvalidRequest, UsageLine
from ledger_service.domain.postings import sum_by_currency

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
PRICE = 39_500
POUND = 1_000_000


def opened(account_type: str = "prepay", **settings: Any) -> BillingAccount:
    return BillingAccount.open(uuid4(), T0, account_type=account_type, **settings)


def funded(pounds: int = 10, **settings: Any) -> BillingAccount:
    account = opened(**settings)
    account.purchase_credit("p1", "stripe", pounds * POUND, "GBP", T0)
    return account


def line(event_id: str, amount_micros: int = PRICE, status: str = "submitted",
         hold_id: str | None = None, quantity: int = 1) -> UsageLine:
    return UsageLine(event_id, "sms", quantity, amount_micros, status, T0, hold_id=hold_id,
                     reference=f"msg-{event_id}")


def names(account: BillingAccount) -> list[str]:
    return [type(e).__name__ for e in account.pending_events]


def test_a_batch_is_one_event_with_one_line_per_message() -> None:
    account = funded()
    account.collect_events()

    result = account.record_usage([line("e1"), line("e2", quantity=3), line("e3")], T0)

    assert names(account) == ["UsageRecorded"]
    event: Any = account.pending_events[0]
    assert [stored["event_id"] for stored in event.lines] == ["e1", "e2", "e3"]
    for stored in event.lines:
        assert stored["entry_id"] == str(uuid5(account.id, stored["event_id"]))
        assert sum_by_currency(stored["postings"]) == {"GBP": 0}
        assert stored["unit_price_micros"] == PRICE
    assert event.lines[1]["amount_micros"] == 3 * PRICE
    assert [s["balance_after_micros"] for s in event.lines] == [
        10 * POUND - PRICE, 10 * POUND - 4 * PRICE, 10 * POUND - 5 * PRICE]
    assert result.balance_after_micros == 10 * POUND - 5 * PRICE
    assert account.balance_micros == result.balance_after_micros
    account.check_invariants()


def test_a_duplicate_event_id_inside_a_batch_is_ignored() -> None:
    account = funded()
    result = account.record_usage([line("e1"), line("e1")], T0)
    assert [o.outcome for o in result.lines] == ["billed", "ignored"]
    assert result.lines[1].reason == "duplicate_in_batch"
    assert account.balance_micros == 10 * POUND - PRICE


def test_unreadable_lines_are_rejected_and_the_rest_of_the_batch_applies() -> None:
    account = funded()
    result = account.record_usage([line("bad", quantity=0), line("e2"),
                                   line("neg", amount_micros=-1)], T0)
    assert [(o.outcome, o.reason) for o in result.lines] == [
        ("rejected", "invalid_quantity"), ("billed", None), ("rejected", "invalid_price")]
    assert account.balance_micros == 10 * POUND - PRICE


def test_a_batch_with_nothing_billable_records_nothing() -> None:
    account = funded()
    account.collect_events()
    result = account.record_usage([line("e1", status="delivered")], T0)
    assert not result.recorded
    assert account.pending_events == []


def test_batches_are_bounded() -> None:
    account = funded()
    with pytest.raises(InvalidRequest):
        account.record_usage([line(f"e{i}") for i in range(5_001)], T0)


@pytest.mark.parametrize(("basis", "status", "outcome", "reason"), [
    ("submitted", "submitted", "billed", None),
    ("submitted", "delivered", "ignored", "not_billable_on_basis"),
    ("submitted", "failed", "ignored", "failed_not_billed"),
    ("submitted", "queued", "ignored", "status_not_billable"),
    ("delivered", "submitted", "ignored", "not_billable_on_basis"),
    ("delivered", "delivered", "billed", None),
    ("delivered", "failed", "ignored", "failed_not_billed"),
    ("delivered", "expired", "ignored", "status_not_billable"),
])
def test_billing_basis_decides_which_status_bills(basis: str, status: str, outcome: str,
                                                  reason: str | None) -> None:
    account = funded(billing_basis=basis)
    result = account.record_usage([line("e1", status=status)], T0)
    assert (result.lines[0].outcome, result.lines[0].reason) == (outcome, reason)
    billed = PRICE if outcome == "billed" else 0
    assert account.balance_micros == 10 * POUND - billed


def test_delivered_basis_keeps_the_hold_on_submitted_and_captures_on_delivered() -> None:
    account = funded(billing_basis="delivered")
    account.authorize("h1", "r1", "sms", 1, PRICE, T0 + timedelta(minutes=5), T0)

    submitted = account.record_usage([line("e1", status="submitted", hold_id="h1")], T0)
    assert submitted.lines[0].outcome == "ignored"
    assert account.held_micros == PRICE

    delivered = account.record_usage([line("e2", status="delivered", hold_id="h1")], T0)
    assert delivered.lines[0].outcome == "billed"
    assert account.held_micros == 0
    assert account.balance_micros == 10 * POUND - PRICE


@pytest.mark.parametrize("basis", ["submitted", "delivered"])
def test_failed_releases_the_hold_and_bills_nothing(basis: str) -> None:
    account = funded(billing_basis=basis)
    account.authorize("h1", "r1", "sms", 1, PRICE, T0 + timedelta(minutes=5), T0)

    result = account.record_usage([line("e1", status="failed", hold_id="h1")], T0)

    assert (result.lines[0].outcome, result.lines[0].reason) == ("released", "failed")
    assert account.held_micros == 0
    assert account.balance_micros == 10 * POUND
    assert account.available_micros == 10 * POUND
    account.check_invariants()


def test_usage_without_a_hold_is_recorded_past_the_floor_and_signals_overdrawn_once() -> None:
    account = funded(pounds=1)
    account.collect_events()

    result = account.record_usage([line("e1", amount_micros=3 * POUND)], T0)

    assert result.lines[0].outcome == "billed"
    assert result.lines[0].overdraft_micros == 2 * POUND
    assert result.overdrawn
    assert names(account) == ["UsageRecorded", "Overdrawn"]
    assert account.available_micros == -2 * POUND
    assert account.is_overdrawn

    again = account.record_usage([line("e2")], T0)
    assert not again.overdrawn
    assert names(account).count("Overdrawn") == 1


def test_overdrawn_re_arms_once_available_is_back_at_the_floor() -> None:
    account = funded(pounds=1)
    account.record_usage([line("e1", amount_micros=3 * POUND)], T0)
    account.purchase_credit("p2", "stripe", 2 * POUND, "GBP", T0)
    assert not account.is_overdrawn
    assert account.record_usage([line("e2", amount_micros=1)], T0).overdrawn


def test_postpay_usage_overdraws_only_below_the_credit_limit() -> None:
    account = opened("postpay", credit_limit_micros=5 * POUND)
    assert not account.record_usage([line("e1", amount_micros=5 * POUND)], T0).overdrawn
    assert account.record_usage([line("e2", amount_micros=1)], T0).overdrawn


def test_balance_low_fires_once_per_crossing_and_re_arms_above_the_threshold() -> None:
    account = funded(pounds=10, low_balance_threshold_micros=5 * POUND)
    assert account.low_balance_armed

    first = account.record_usage([line("e1", amount_micros=6 * POUND)], T0)
    assert first.balance_low
    second = account.record_usage([line("e2", amount_micros=POUND)], T0)
    assert not second.balance_low
    assert names(account).count("BalanceLow") == 1

    account.purchase_credit("p2", "stripe", 10 * POUND, "GBP", T0)
    assert account.low_balance_armed
    third = account.record_usage([line("e3", amount_micros=9 * POUND)], T0)
    assert third.balance_low
    assert names(account).count("BalanceLow") == 2


def test_balance_low_is_one_event_for_a_whole_batch() -> None:
    account = funded(pounds=10, low_balance_threshold_micros=5 * POUND)
    account.collect_events()
    account.record_usage([line(f"e{i}", amount_micros=2 * POUND) for i in range(4)], T0)
    assert names(account) == ["UsageRecorded", "BalanceLow"]


def test_threshold_zero_disables_balance_low() -> None:
    account = funded(pounds=1)
    account.record_usage([line("e1", amount_micros=POUND)], T0)
    assert "BalanceLow" not in names(account)


def test_an_account_opened_below_its_threshold_is_armed_only_once_it_reaches_it() -> None:
    account = opened(low_balance_threshold_micros=5 * POUND)
    assert not account.low_balance_armed
    account.grant("g", "bonus", 3 * POUND, T0)
    account.record_usage([line("e1", amount_micros=POUND)], T0)
    assert "BalanceLow" not in names(account)
