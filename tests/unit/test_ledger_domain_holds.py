"""Holds and floors: authorize, capture through usage, release, expire, close."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from ledger_service.domain import (
    AccountClosed,
    BillingAccount,
    CreditLimitExceeded,
    DuplicateKey,
    HoldNotFound,
    InsufficientFunds,
    InvalidRequest,
    UsageLine,
)
from ledger_service.domain.postings import replay_postings

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)
PRICE = 39_500
POUND = 1_000_000


def opened(account_type: str = "prepay", **settings: Any) -> BillingAccount:
    return BillingAccount.open(uuid4(), T0, account_type=account_type, **settings)


def funded(account_type: str = "prepay", pounds: int = 10, **settings: Any) -> BillingAccount:
    account = opened(account_type, **settings)
    account.purchase_credit("p1", "stripe", pounds * POUND, "GBP", T0)
    return account


def hold(account: BillingAccount, hold_id: str, quantity: int, now: datetime = T0,
         price: int = PRICE) -> Any:
    return account.authorize(hold_id, f"req-{hold_id}", "sms", quantity, price, now + TTL, now)


def names(account: BillingAccount) -> list[str]:
    return [type(e).__name__ for e in account.pending_events]


def last(account: BillingAccount, name: str) -> Any:
    return next(e for e in reversed(account.pending_events) if type(e).__name__ == name)


def assert_rejected_writes_nothing(account: BillingAccount, error: type[Exception],
                                   command: Any) -> None:
    before = (account.version, len(account.pending_events), account.available_micros)
    with pytest.raises(error):
        command()
    assert (account.version, len(account.pending_events), account.available_micros) == before


def test_authorize_moves_the_amount_from_available_to_held() -> None:
    account = funded()
    result = hold(account, "h1", 10)

    assert result.amount_micros == 10 * PRICE
    assert account.held_micros == 10 * PRICE
    assert account.available_micros == 10 * POUND - 10 * PRICE
    assert account.balance_micros == 10 * POUND
    assert result.available_after_micros == account.available_micros
    assert [h.hold_id for h in account.open_holds] == ["h1"]
    sums = replay_postings(account.pending_events)
    assert sums[f"customer:{account.id}:held"] == 10 * PRICE
    account.check_invariants()


def test_prepay_authorization_never_takes_available_below_zero() -> None:
    account = funded(pounds=1)
    hold(account, "h1", 1, price=POUND)
    assert account.available_micros == 0
    assert_rejected_writes_nothing(account, InsufficientFunds,
                                   lambda: hold(account, "h2", 1, price=1))


def test_trial_authorization_counts_promotional_credit_only() -> None:
    account = opened("trial")
    account.grant("promo", "signup_promo", POUND, T0)
    account.purchase_credit("p1", "stripe", 50 * POUND, "GBP", T0)
    assert_rejected_writes_nothing(account, InsufficientFunds,
                                   lambda: hold(account, "h1", 2, price=POUND))
    hold(account, "h1", 1, price=POUND)
    assert account.available_micros == 0


def test_postpay_authorizes_down_to_minus_its_credit_limit() -> None:
    account = opened("postpay", credit_limit_micros=10 * POUND)
    hold(account, "h1", 10, price=POUND)
    assert account.available_micros == -10 * POUND
    assert_rejected_writes_nothing(account, CreditLimitExceeded,
                                   lambda: hold(account, "h2", 1, price=1))


def test_system_accounts_have_no_floor_and_zero_holds() -> None:
    account = opened("system")
    result = hold(account, "h1", 1_000_000)
    assert result.amount_micros == 0
    assert account.floor_micros is None
    outcome = account.record_usage(
        [UsageLine("e1", "sms", 5, PRICE, "submitted", T0, hold_id="h1")], T0)
    assert outcome.lines[0].outcome == "released"
    assert account.balance_micros == 0
    assert account.open_holds == []


def test_authorize_refuses_bad_requests_and_records_nothing() -> None:
    account = funded()
    hold(account, "h1", 1)
    assert_rejected_writes_nothing(account, DuplicateKey, lambda: hold(account, "h1", 1))
    assert_rejected_writes_nothing(account, InvalidRequest, lambda: hold(account, "h2", 0))
    assert_rejected_writes_nothing(account, InvalidRequest, lambda: account.authorize(
        "h2", "r", "sms", 1, PRICE, T0, T0))
    assert_rejected_writes_nothing(account, InvalidRequest, lambda: account.authorize(
        "h 2", "r", "sms", 1, PRICE, T0 + TTL, T0))


def test_authorization_does_not_count_grants_past_their_expiry() -> None:
    account = opened()
    account.grant("promo", "signup_promo", 5 * POUND, T0, expires_at=T0 + timedelta(hours=1))
    later = T0 + timedelta(hours=2)
    assert_rejected_writes_nothing(account, InsufficientFunds,
                                   lambda: hold(account, "h1", 1, now=later, price=POUND))
    assert account.grants[0].grant_id == "promo"  # nothing expired by the refusal


def test_usage_with_an_open_hold_captures_it_at_the_actual_quantity() -> None:
    account = funded()
    hold(account, "h1", 10)
    result = account.record_usage(
        [UsageLine("e1", "sms", 12, PRICE, "submitted", T0, hold_id="h1")], T0)

    line = result.lines[0]
    assert (line.outcome, line.reason, line.amount_micros) == ("billed", "captured_hold",
                                                               12 * PRICE)
    assert account.held_micros == 0
    assert account.open_holds == []
    assert account.balance_micros == 10 * POUND - 12 * PRICE
    stored = last(account, "UsageRecorded").lines[0]
    assert (stored["hold_outcome"], stored["held_micros"]) == ("captured", 10 * PRICE)
    assert account.was_captured("h1")
    account.check_invariants()


def test_a_second_usage_for_a_captured_hold_is_not_billed() -> None:
    account = funded()
    hold(account, "h1", 1)
    account.record_usage([UsageLine("e1", "sms", 1, PRICE, "submitted", T0, hold_id="h1")], T0)
    balance = account.balance_micros
    version = account.version

    result = account.record_usage(
        [UsageLine("e2", "sms", 1, PRICE, "submitted", T0, hold_id="h1")], T0)

    assert (result.lines[0].outcome, result.lines[0].reason) == ("ignored",
                                                                 "hold_already_captured")
    assert not result.recorded
    assert account.balance_micros == balance
    assert account.version == version


def test_same_hold_twice_in_one_batch_bills_once() -> None:
    account = funded()
    hold(account, "h1", 1)
    result = account.record_usage([
        UsageLine("e1", "sms", 1, PRICE, "submitted", T0, hold_id="h1"),
        UsageLine("e2", "sms", 1, PRICE, "submitted", T0, hold_id="h1"),
    ], T0)
    assert [o.outcome for o in result.lines] == ["billed", "ignored"]
    assert account.balance_micros == 10 * POUND - PRICE


def test_release_hold_returns_the_amount_and_unknown_holds_are_typed_errors() -> None:
    account = funded()
    hold(account, "h1", 10)
    assert account.release_hold("h1", T0) == 10 * PRICE
    assert account.held_micros == 0
    assert account.available_micros == 10 * POUND
    assert names(account)[-1] == "HoldReleased"
    assert_rejected_writes_nothing(account, HoldNotFound, lambda: account.release_hold("h1", T0))


def test_usage_for_a_released_hold_is_billed_without_it() -> None:
    account = funded()
    hold(account, "h1", 1)
    account.release_hold("h1", T0)
    result = account.record_usage(
        [UsageLine("e1", "sms", 1, PRICE, "submitted", T0, hold_id="h1")], T0)
    assert (result.lines[0].outcome, result.lines[0].reason) == ("billed", "hold_not_open")
    assert account.balance_micros == 10 * POUND - PRICE


def test_expire_holds_expires_only_due_holds_in_one_event_and_is_idempotent() -> None:
    account = funded()
    hold(account, "h1", 1)
    hold(account, "h2", 1, now=T0 + timedelta(minutes=3))
    account.collect_events()

    assert account.expire_holds(T0 + TTL - timedelta(seconds=1)) == ()
    assert account.pending_events == []
    assert account.expire_holds(T0 + TTL) == ("h1",)
    assert names(account) == ["HoldsExpired"]
    assert [h.hold_id for h in account.open_holds] == ["h2"]
    assert account.expire_holds(T0 + TTL) == ()
    assert account.expire_holds(T0 + timedelta(hours=1)) == ("h2",)
    assert account.held_micros == 0
    assert account.available_micros == 10 * POUND
    account.check_invariants()


def test_closing_stops_debits_and_authorizations_and_releases_holds() -> None:
    account = funded()
    hold(account, "h1", 10)

    assert account.close(T0, reason="customer left", actor="ops")

    assert account.is_closed
    assert account.held_micros == 0
    assert_rejected_writes_nothing(account, AccountClosed, lambda: hold(account, "h2", 1))
    assert_rejected_writes_nothing(account, AccountClosed, lambda: account.record_usage(
        [UsageLine("e1", "sms", 1, PRICE, "submitted", T0)], T0))
    assert account.close(T0) is False
    account.purchase_credit("p2", "stripe", POUND, "GBP", T0)  # money received still lands
    assert account.balance_micros == 11 * POUND
