"""Fees: recurring and one-off charges recorded by the account (charge_fee)."""

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from ledger_service.domain import BillingAccount
from ledger_service.domain.errors import (
    AccountClosed,
    DuplicateKey,
    InsufficientFunds,
    InvalidRequest,
)
from ledger_service.domain.fees import FeeCharge, prorated_micros
from ledger_service.domain.postings import REVENUE_RECURRING, replay_postings, sum_by_currency
from ledger_service.projections.statement import statement_entries

T0 = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
POUND = 1_000_000


def opened(account_type: str = "prepay", **settings: Any) -> BillingAccount:
    return BillingAccount.open(uuid4(), T0, account_type=account_type, **settings)


def monthly(key: str = "recurring:item-1:2026-12", *, days: int | None = None,
            days_in_period: int | None = None, unit: int = 2 * POUND) -> FeeCharge:
    return FeeCharge(charge_key=key, product="vmn", quantity=1, unit_price_micros=unit,
                     reference="+447700900123", period="2026-12", days=days,
                     days_in_period=days_in_period)


def last(account: BillingAccount, name: str) -> Any:
    return next(e for e in reversed(account.pending_events) if type(e).__name__ == name)


def test_proration_rounds_half_up_to_a_micro_unit() -> None:
    assert prorated_micros(2 * POUND, 1, 17, 31) == 1_096_774  # 1096774.19...
    assert prorated_micros(1, 1, 1, 2) == 1  # 0.5 rounds up
    assert prorated_micros(3, 1, 1, 2) == 2  # 1.5 rounds up
    assert prorated_micros(2 * POUND, 3, None, None) == 6 * POUND
    assert prorated_micros(2 * POUND, 1, 31, 31) == 2 * POUND


def test_a_prepay_fee_debits_the_balance_to_recurring_revenue() -> None:
    account = opened()
    account.purchase_credit("p1", "stripe", 5 * POUND, "GBP", T0)
    result = account.charge_fee(monthly(), T0)
    assert result.amount_micros == -2 * POUND
    assert account.balance_micros == 3 * POUND
    event = last(account, "FeeCharged")
    assert sum_by_currency(event.postings) == {"GBP": 0}
    sums = replay_postings(account.pending_events)
    assert sums[REVENUE_RECURRING] == 2 * POUND
    (entry,) = statement_entries(event)
    assert (entry.kind, entry.amount_micros, entry.reference, entry.product) == (
        "fee", -2 * POUND, "+447700900123", "vmn")
    assert entry.balance_after_micros == 3 * POUND


def test_a_prepay_fee_the_funds_do_not_cover_is_refused_and_records_nothing() -> None:
    account = opened()
    account.purchase_credit("p1", "stripe", POUND, "GBP", T0)
    before = len(account.pending_events)
    with pytest.raises(InsufficientFunds):
        account.charge_fee(monthly(), T0)
    assert len(account.pending_events) == before
    assert account.balance_micros == POUND


def test_a_postpay_fee_is_recorded_past_the_credit_limit() -> None:
    account = opened("postpay", credit_limit_micros=POUND)
    account.charge_fee(monthly(unit=5 * POUND), T0)
    assert account.balance_micros == -5 * POUND
    assert account.is_overdrawn


def test_the_same_charge_key_is_charged_once() -> None:
    account = opened("postpay", credit_limit_micros=100 * POUND)
    account.charge_fee(monthly(), T0)
    with pytest.raises(DuplicateKey):
        account.charge_fee(monthly(), T0)
    assert account.balance_micros == -2 * POUND


def test_a_prorated_fee_charges_its_days() -> None:
    account = opened("postpay", credit_limit_micros=100 * POUND)
    account.charge_fee(monthly(days=17, days_in_period=31), T0)
    assert account.balance_micros == -1_096_774
    (entry,) = statement_entries(last(account, "FeeCharged"))
    assert "17/31 days" in entry.description


@pytest.mark.parametrize("fee", [
    FeeCharge("k", "vmn", 0, POUND),
    FeeCharge("k", "vmn", 1, -1),
    FeeCharge("k", "", 1, POUND),
    FeeCharge("k", "vmn", 1, POUND, period="2026-13"),
    FeeCharge("k", "vmn", 1, POUND, period="2026-12", days=32, days_in_period=31),
    FeeCharge("k", "vmn", 1, POUND, period="2026-12", days=3, days_in_period=None),
    FeeCharge("k", "vmn", 1, POUND, days=3, days_in_period=30),
    FeeCharge("has space", "vmn", 1, POUND),
])
def test_malformed_fees_are_refused(fee: FeeCharge) -> None:
    account = opened("postpay", credit_limit_micros=POUND)
    with pytest.raises(InvalidRequest):
        account.charge_fee(fee, T0)
    assert not [e for e in account.pending_events if type(e).__name__ == "FeeCharged"]


def test_a_closed_account_is_not_charged() -> None:
    account = opened("postpay", credit_limit_micros=POUND)
    account.close(T0)
    with pytest.raises(AccountClosed):
        account.charge_fee(monthly(), T0)


def test_a_fee_that_crosses_the_threshold_signals_balance_low() -> None:
    account = opened(low_balance_threshold_micros=2 * POUND)
    account.purchase_credit("p1", "stripe", 3 * POUND, "GBP", T0)
    account.charge_fee(monthly(), T0)
    assert last(account, "BalanceLow").available_micros == POUND
