"""Credit grants: consumption order, trial spending, conversion, expiry, deficits."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from ledger_service.domain import (
    BillingAccount,
    DuplicateKey,
    InvalidRequest,
    InvalidSetting,
    InvalidTransition,
    UsageLine,
)
from ledger_service.domain.postings import EXPENSE_PROMOTION, sum_by_currency

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
POUND = 1_000_000


def opened(account_type: str = "prepay", **settings: Any) -> BillingAccount:
    return BillingAccount.open(uuid4(), T0, account_type=account_type, **settings)


def sms(event_id: str, amount_micros: int, status: str = "submitted") -> UsageLine:
    return UsageLine(event_id, "sms", 1, amount_micros, status, T0)


def names(account: BillingAccount) -> list[str]:
    return [type(e).__name__ for e in account.pending_events]


def last(account: BillingAccount, name: str) -> Any:
    return next(e for e in reversed(account.pending_events) if type(e).__name__ == name)


def test_debit_spends_promotional_first_then_soonest_expiry_then_creation_order() -> None:
    account = opened()
    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0)
    account.grant("bonus", "bonus", POUND, T0, expires_at=T0 + timedelta(days=10))
    account.grant("signup", "signup_promo", POUND, T0, expires_at=T0 + timedelta(days=2))
    account.grant("referral", "referral", POUND, T0)
    account.grant("comp", "compensation", POUND, T0, expires_at=T0 + timedelta(days=2))

    assert [g.grant_id for g in account.grants] == [
        "signup", "comp", "bonus", "referral", "payment:stripe:p1"]
    account.record_usage([sms("e1", 4_500_000)], T0)

    line = last(account, "UsageRecorded").lines[0]
    assert [(c["grant_id"], c["amount_micros"]) for c in line["grants_consumed"]] == [
        ("signup", POUND), ("comp", POUND), ("bonus", POUND), ("referral", POUND),
        ("payment:stripe:p1", 500_000)]
    assert line["overdraft_micros"] == 0
    assert [(g.grant_id, g.remaining_micros) for g in account.grants] == [
        ("payment:stripe:p1", 4_500_000)]
    account.check_invariants()


def test_trial_spends_promotional_credit_only() -> None:
    account = opened("trial")
    account.grant("promo", "signup_promo", 2 * POUND, T0)
    account.purchase_credit("p1", "stripe", 10 * POUND, "GBP", T0)

    assert account.balance_micros == 12 * POUND
    assert account.locked_micros == 10 * POUND
    assert account.available_micros == 2 * POUND

    account.record_usage([sms("e1", 3 * POUND)], T0)

    line = last(account, "UsageRecorded").lines[0]
    assert [c["grant_id"] for c in line["grants_consumed"]] == ["promo"]
    assert line["overdraft_micros"] == POUND
    assert account.deficit_micros == POUND
    assert account.available_micros == -POUND
    account.check_invariants()


def test_converting_trial_expires_its_promotional_grants_in_one_event() -> None:
    account = opened("trial")
    account.grant("signup", "signup_promo", 2 * POUND, T0)
    account.grant("mobile", "mobile_verification", POUND, T0)
    account.grant("bonus", "bonus", POUND, T0)
    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0)
    account.collect_events()

    assert account.change_type("prepay", T0, actor="ops@example.com")

    assert names(account) == ["TypeChanged", "GrantsExpired"]
    expired = last(account, "GrantsExpired")
    assert expired.reason == "trial_converted"
    assert {g["grant_id"] for g in expired.grants} == {"signup", "mobile"}
    by_account = {p["ledger_account"]: p["amount_micros"] for p in expired.postings}
    assert by_account[EXPENSE_PROMOTION] == 3 * POUND
    assert sum_by_currency(expired.postings) == {"GBP": 0}
    assert {g.grant_id for g in account.grants} == {"bonus", "payment:stripe:p1"}
    assert account.available_micros == 6 * POUND
    account.check_invariants()


def test_converting_back_to_trial_or_to_the_same_type_is_refused_or_a_no_op() -> None:
    account = opened("prepay")
    with pytest.raises(InvalidTransition):
        account.change_type("trial", T0)
    with pytest.raises(InvalidTransition):
        account.change_type("system", T0)
    account.collect_events()
    assert account.change_type("prepay", T0) is False
    assert account.pending_events == []


def test_postpay_conversion_sets_credit_limit_and_prepay_refuses_one() -> None:
    account = opened("prepay")
    with pytest.raises(InvalidSetting):
        account.change_settings(T0, credit_limit_micros=POUND)
    account.change_type("postpay", T0, credit_limit_micros=50 * POUND)
    assert account.floor_micros == -50 * POUND
    account.change_type("prepay", T0)
    assert account.floor_micros == 0
    assert account.settings.credit_limit_micros == 0


def test_expire_grants_is_one_event_and_idempotent() -> None:
    account = opened()
    account.grant("a", "signup_promo", POUND, T0, expires_at=T0 + timedelta(days=1))
    account.grant("b", "bonus", 2 * POUND, T0, expires_at=T0 + timedelta(days=1))
    account.grant("c", "bonus", 3 * POUND, T0, expires_at=T0 + timedelta(days=5))
    account.collect_events()

    assert account.expire_grants(T0) == ()
    assert account.pending_events == []

    assert set(account.expire_grants(T0 + timedelta(days=1))) == {"a", "b"}
    assert names(account) == ["GrantsExpired"]
    assert account.balance_micros == 3 * POUND

    assert account.expire_grants(T0 + timedelta(days=2)) == ()
    assert names(account) == ["GrantsExpired"]
    account.check_invariants()


def test_usage_expires_lapsed_grants_before_spending_them() -> None:
    account = opened()
    account.grant("old", "signup_promo", 5 * POUND, T0, expires_at=T0 + timedelta(hours=1))
    account.collect_events()

    result = account.record_usage([sms("e1", POUND)], T0 + timedelta(hours=2))

    assert result.grants_expired == ("old",)
    assert names(account)[:2] == ["GrantsExpired", "UsageRecorded"]
    assert result.lines[0].overdraft_micros == POUND
    account.check_invariants()


def test_later_credit_first_covers_an_existing_deficit() -> None:
    account = opened()
    account.record_usage([sms("e1", 3 * POUND)], T0)
    assert account.deficit_micros == 3 * POUND
    assert account.balance_micros == -3 * POUND

    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0)

    purchased = last(account, "CreditPurchased")
    assert purchased.deficit_covered_micros == 3 * POUND
    assert account.deficit_micros == 0
    assert [(g.grant_id, g.remaining_micros) for g in account.grants] == [
        ("payment:stripe:p1", 2 * POUND)]
    assert account.balance_micros == 2 * POUND
    account.check_invariants()


def test_a_credit_smaller_than_the_deficit_leaves_no_grant() -> None:
    account = opened()
    account.record_usage([sms("e1", 3 * POUND)], T0)
    account.grant("g", "compensation", POUND, T0)
    assert account.grants == []
    assert account.deficit_micros == 2 * POUND
    account.check_invariants()


def test_grant_refuses_bad_input_and_records_nothing() -> None:
    account = opened()
    account.grant("g", "bonus", POUND, T0)
    account.collect_events()
    version = account.version
    with pytest.raises(DuplicateKey):
        account.grant("g", "bonus", POUND, T0)
    with pytest.raises(InvalidSetting):
        account.grant("h", "adjustment", POUND, T0)
    with pytest.raises(InvalidRequest):
        account.grant("h", "bonus", POUND, T0, expires_at=T0)
    with pytest.raises(InvalidRequest):
        account.grant("h", "bonus", 0, T0)
    with pytest.raises(InvalidRequest):
        account.grant("h", "bonus", POUND, datetime(2026, 2, 20, 9))  # naive
    assert account.version == version
    assert account.pending_events == []
