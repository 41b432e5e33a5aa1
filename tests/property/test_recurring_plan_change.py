"""An immediate plan change (invoicing_service/recurring/domain.py immediate_change): the
unused part of the plan left is credited, the new plan charged for the rest of the month,
both by month_charge's days and the ledger's rounding. Over a month of any number of
changes the account pays exactly what each plan's days cost on their own, to the micro."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from invoicing_service.recurring.domain import (
    RecurringProduct,
    Segment,
    immediate_change,
    month_charge,
    period_of,
    prorated_micros,
)
from ledger_service.domain.fees import prorated_micros as ledger_prorated_micros

PRODUCTS = [RecurringProduct("vmn", "vmn_setup", prorate=True),
            RecurringProduct("plan_a", None, prorate=True),
            RecurringProduct("keyword_whole", None, prorate=False)]
products = st.sampled_from(PRODUCTS)
unit_prices = st.integers(0, 50_000_000)  # up to 50.00, any micro
quantities = st.integers(1, 1_000)


@st.composite
def months(draw: st.DrawFn) -> tuple[date, date]:
    year = draw(st.integers(2024, 2030))
    month = draw(st.integers(1, 12))
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def cost(product: RecurringProduct, unit: int, quantity: int, first: date,
         last: date) -> int:
    """What the ledger charges for `first`..`last` of one month on one plan (0: no days)."""
    if last < first:
        return 0
    charge = month_charge(product, quantity, period_of(first), first, last)
    assert charge is not None
    return ledger_prorated_micros(unit, quantity, charge.days, charge.days_in_period)


@given(st.integers(0, 10**9), quantities, st.integers(1, 31), st.sampled_from([28, 29, 30, 31]))
def test_the_rounding_rule_is_the_ledgers(unit: int, quantity: int, days: int,
                                          days_in_period: int) -> None:
    days = min(days, days_in_period)
    assert prorated_micros(unit, quantity, days, days_in_period) == \
        ledger_prorated_micros(unit, quantity, days, days_in_period)
    assert prorated_micros(unit, quantity, None, None) == unit * quantity


@given(months(), st.data())
def test_a_month_with_changes_costs_each_plans_days_exactly(
        month: tuple[date, date], data: st.DataObject) -> None:
    first, last = month
    start = data.draw(st.integers(0, (last - first).days).map(lambda n: first + timedelta(n)))
    ends_on = data.draw(st.none() | st.integers((start - first).days, (last - first).days)
                        .map(lambda n: first + timedelta(n)))
    end = ends_on or last
    product, unit, quantity = data.draw(products), data.draw(unit_prices), data.draw(quantities)
    # the month's charge, as renewals make it (the item starts on `start`)
    paid = cost(product, unit, quantity, start, end)
    segment = Segment(product, quantity, unit, paid, start)
    days = sorted(data.draw(st.lists(st.integers((start - first).days, (end - first).days),
                                     max_size=4)))
    expected = 0
    for day in (first + timedelta(n) for n in days):
        new_product = data.draw(products)
        new_unit, new_quantity = data.draw(unit_prices), data.draw(quantities)
        change = immediate_change(segment, new_product, new_quantity, day, ends_on)
        assert 0 <= change.credit_micros <= segment.amount_micros
        charge = ledger_prorated_micros(new_unit, new_quantity, change.charge.days,
                                        change.charge.days_in_period)
        paid += charge - change.credit_micros
        # the plan left costs its days before `day` (charged whole if it does not prorate)
        used = cost(segment.product, segment.unit_price_micros, segment.quantity,
                    segment.starts_on, day - timedelta(days=1))
        if not segment.product.prorate and used:
            used = segment.amount_micros  # a whole-month product keeps what it charged
        expected += used
        segment = Segment(new_product, new_quantity, new_unit, charge, day)
    expected += segment.amount_micros
    assert paid == expected


@given(months(), st.data())
def test_the_credit_is_the_unused_days_at_the_old_price_within_a_micro(
        month: tuple[date, date], data: st.DataObject) -> None:
    first, last = month
    unit, quantity = data.draw(unit_prices), data.draw(quantities)
    product = PRODUCTS[0]
    day = first + timedelta(days=data.draw(st.integers(0, (last - first).days)))
    segment = Segment(product, quantity, unit, unit * quantity, first)
    change = immediate_change(segment, PRODUCTS[1], 1, day, None)
    unused = cost(product, unit, quantity, day, last)
    # whole - round(used) against round(unused): equal but at an exact half micro
    assert abs(change.credit_micros - unused) <= 1
    assert change.charge.due_on == day
    assert (change.charge.days or (last - first).days + 1) == (last - day).days + 1


def test_a_change_on_the_first_day_of_a_segment_credits_all_of_it() -> None:
    segment = Segment(PRODUCTS[0], 2, 2_000_000, 4_000_000, date(2026, 12, 1))
    change = immediate_change(segment, PRODUCTS[1], 1, date(2026, 12, 1), None)
    assert change.credit_micros == 4_000_000 and change.used is None
    assert change.charge.days is None  # the whole month on the new plan


def test_a_whole_month_product_is_not_credited() -> None:
    segment = Segment(PRODUCTS[2], 1, 5_000_000, 5_000_000, date(2026, 12, 1))
    change = immediate_change(segment, PRODUCTS[0], 1, date(2026, 12, 20), None)
    assert change.credit_micros == 0
    assert (change.charge.days, change.charge.days_in_period) == (12, 31)
