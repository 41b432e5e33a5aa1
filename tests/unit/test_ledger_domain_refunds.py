"""Refunds, adjustments and payment reversals."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from ledger_service.domain import (
    BillingAccount,
    DebitRef,
    InvalidMemo,
    InvalidRequest,
    RefundExceedsDebit,
    UsageLine,
    debit_refs_of,
)
from ledger_service.domain.postings import (
    EXPENSE_PROMOTION,
    REVENUE_USAGE,
    replay_postings,
    sum_by_currency,
)

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
POUND = 1_000_000


def opened(account_type: str = "prepay", **settings: Any) -> BillingAccount:
    return BillingAccount.open(uuid4(), T0, account_type=account_type, **settings)


def debit(account: BillingAccount, event_id: str, amount_micros: int,
          now: datetime = T0) -> DebitRef:
    account.record_usage([UsageLine(event_id, "sms", 1, amount_micros, "submitted", now)], now)
    event = next(e for e in reversed(account.pending_events)
                 if type(e).__name__ == "UsageRecorded")
    (ref,) = debit_refs_of(event)
    return ref


def last(account: BillingAccount, name: str) -> Any:
    return next(e for e in reversed(account.pending_events) if type(e).__name__ == name)


def remaining(account: BillingAccount) -> dict[str, int]:
    return {g.grant_id: g.remaining_micros for g in account.grants}


def promo_and_purchase() -> tuple[BillingAccount, DebitRef]:
    account = opened()
    account.grant("promo", "signup_promo", 2 * POUND, T0)
    account.purchase_credit("p1", "stripe", 10 * POUND, "GBP", T0)
    return account, debit(account, "e1", 5 * POUND)


def test_a_partial_refund_restores_the_last_consumed_grant_first() -> None:
    account, ref = promo_and_purchase()
    assert remaining(account) == {"payment:stripe:p1": 7 * POUND}

    result = account.refund("r1", ref, POUND, "undelivered", "ops", T0)

    assert (result.refunded_micros, result.remaining_refundable_micros) == (POUND, 4 * POUND)
    assert remaining(account) == {"payment:stripe:p1": 8 * POUND}
    assert account.balance_micros == 8 * POUND
    account.check_invariants()


def test_refunding_the_remainder_then_again_is_a_no_op() -> None:
    account, ref = promo_and_purchase()
    account.refund("r1", ref, POUND, "test", "ops", T0)

    rest = account.refund("r2", ref, None, "test", "ops", T0)
    assert rest.refunded_micros == 4 * POUND
    assert remaining(account) == {"promo": 2 * POUND, "payment:stripe:p1": 10 * POUND}
    assert account.balance_micros == 12 * POUND
    restorations = {r["grant_id"]: r["effect"] for r in rest.restorations}
    assert restorations == {"payment:stripe:p1": "restored", "promo": "recreated"}

    version = account.version
    again = account.refund("r3", ref, None, "test", "ops", T0)
    assert again.no_op
    assert again.refunded_micros == 0
    assert account.version == version
    assert account.refund("r4", ref, POUND, "test", "ops", T0).no_op
    account.check_invariants()


def test_a_refund_never_exceeds_what_was_debited() -> None:
    account, ref = promo_and_purchase()
    account.refund("r1", ref, 3 * POUND, "test", "ops", T0)
    version = account.version
    with pytest.raises(RefundExceedsDebit):
        account.refund("r2", ref, 3 * POUND, "test", "ops", T0)
    assert account.version == version
    assert account.refunded_micros(ref.entry_id) == 3 * POUND


def test_refund_postings_reverse_revenue() -> None:
    account, ref = promo_and_purchase()
    account.refund("r1", ref, None, "test", "ops", T0)
    refunded = last(account, "Refunded")
    legs = {p["ledger_account"]: p["amount_micros"] for p in refunded.postings}
    assert legs == {f"customer:{account.id}:available": 5 * POUND, REVENUE_USAGE: -5 * POUND}
    assert replay_postings(account.pending_events)[REVENUE_USAGE] == 0


def test_refund_to_a_grant_that_has_since_expired_restores_nothing() -> None:
    account = opened()
    account.grant("promo", "signup_promo", 2 * POUND, T0, expires_at=T0 + timedelta(days=1))
    ref = debit(account, "e1", POUND)
    later = T0 + timedelta(days=2)

    result = account.refund("r1", ref, None, "test", "ops", later)

    assert [r["effect"] for r in result.restorations] == ["expired"]
    assert account.balance_micros == 0
    assert account.grants == []
    refunded = last(account, "Refunded")
    legs = {p["ledger_account"]: p["amount_micros"] for p in refunded.postings}
    assert legs == {REVENUE_USAGE: -POUND, EXPENSE_PROMOTION: POUND}
    account.check_invariants()


def test_refunding_an_overdraft_covers_the_deficit_first() -> None:
    account = opened()
    account.grant("g", "bonus", POUND, T0)
    ref = debit(account, "e1", 3 * POUND)
    assert (ref.overdraft_micros, account.deficit_micros) == (2 * POUND, 2 * POUND)

    account.refund("r1", ref, None, "test", "ops", T0)

    assert account.deficit_micros == 0
    assert remaining(account) == {"g": POUND}
    assert account.balance_micros == POUND
    account.check_invariants()


def test_refunding_an_overdraft_already_paid_becomes_a_refund_grant() -> None:
    account = opened()
    ref = debit(account, "e1", 3 * POUND)
    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0)

    account.refund("r1", ref, None, "test", "ops", T0)

    assert remaining(account) == {"payment:stripe:p1": 2 * POUND, "refund:r1": 3 * POUND}
    assert account.grants[-1].kind == "refund"
    assert account.balance_micros == 5 * POUND
    account.check_invariants()


def test_refund_checks_the_debit_reference_adds_up() -> None:
    account, ref = promo_and_purchase()
    broken = DebitRef(ref.entry_id, ref.amount_micros + 1, ref.grants_consumed,
                      ref.overdraft_micros, ref.occurred_at)
    with pytest.raises(InvalidRequest):
        account.refund("r1", broken, None, "test", "ops", T0)


@pytest.mark.parametrize("memo", ["too short", " " * 20 + "x", "x" * 501])
def test_adjustment_memo_must_be_10_to_500_characters(memo: str) -> None:
    account = opened()
    version = account.version
    with pytest.raises(InvalidMemo):
        account.adjust("a1", "credit", POUND, memo, "ops@example.com", T0)
    assert account.version == version


@pytest.mark.parametrize("memo", ["ten chars!", "x" * 500])
def test_adjustment_memo_bounds_are_inclusive(memo: str) -> None:
    account = opened()
    account.adjust("a1", "credit", POUND, memo, "ops@example.com", T0)
    assert account.balance_micros == POUND


def test_adjustment_needs_an_actor() -> None:
    with pytest.raises(InvalidRequest):
        opened().adjust("a1", "credit", POUND, "goodwill credit", " ", T0)


def test_credit_adjustment_is_a_grant_spent_last() -> None:
    account = opened()
    account.adjust("a1", "credit", POUND, "goodwill for the outage", "ops", T0)
    account.grant("promo", "bonus", POUND, T0)
    assert [g.grant_id for g in account.grants] == ["promo", "adjustment:a1"]
    adjusted = last(account, "Adjusted")
    assert (adjusted.actor, adjusted.memo) == ("ops", "goodwill for the outage")
    assert sum_by_currency(adjusted.postings) == {"GBP": 0}


def test_debit_adjustment_consumes_grants_may_overdraw_and_is_refundable() -> None:
    account = opened()
    account.grant("promo", "bonus", POUND, T0)
    result = account.adjust("a1", "debit", 3 * POUND, "correcting a missed charge", "ops", T0)
    assert result.amount_micros == -3 * POUND
    assert account.balance_micros == -2 * POUND
    assert account.deficit_micros == 2 * POUND

    (ref,) = debit_refs_of(last(account, "Adjusted"))
    assert ref.kind == "adjustment"
    account.refund("r1", ref, None, "test", "ops", T0)
    assert account.balance_micros == POUND
    account.check_invariants()


def test_payment_reversal_takes_back_paid_credit_never_promotional() -> None:
    account = opened()
    account.grant("promo", "bonus", 5 * POUND, T0)
    account.purchase_credit("p1", "stripe", 3 * POUND, "GBP", T0)

    account.reverse_payment("p1", "stripe", 4 * POUND, T0, reason="charge.refunded")

    assert remaining(account) == {"promo": 5 * POUND}
    assert account.deficit_micros == POUND
    assert account.balance_micros == 4 * POUND
    account.check_invariants()
