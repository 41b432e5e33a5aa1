"""The renewal schedule (invoicing_service/recurring/domain.py) under random items and clock
jumps over a year: planned as the scheduler plans (one row per item and period, whatever
runs when), every month the item covers is charged exactly once, prorated by the days it
covers, the setup fee once, nothing before the start or after the end."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing_service.recurring.domain import (
    PlannedCharge,
    RecurringProduct,
    cancellation_end,
    charges_due,
    month_start,
    period_of,
)
from ledger_service.domain.fees import prorated_micros

YEAR_START = date(2026, 1, 1)
days_in_year = st.integers(0, 400).map(lambda n: YEAR_START + timedelta(days=n))
products = st.sampled_from([RecurringProduct("vmn", "vmn_setup", prorate=True),
                            RecurringProduct("shortcode_keyword", "shortcode_keyword_setup",
                                             prorate=False),
                            RecurringProduct("plan", None, prorate=True)])


def plan(product: RecurringProduct, starts_on: date, ends_on: date | None,
         run_days: list[date]) -> dict[str, PlannedCharge]:
    """What the table holds after runs on `run_days`: the first planning of a period wins."""
    table: dict[str, PlannedCharge] = {}
    for today in run_days:
        for charge in charges_due(product, 2, starts_on, ends_on, today):
            table.setdefault(charge.period, charge)
    return table


def covered_days(period: str, starts_on: date, ends_on: date | None) -> int:
    first = month_start(period)
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    low, high = max(first, starts_on), last if ends_on is None else min(last, ends_on)
    return max(0, (high - low).days + 1)


@settings(max_examples=400, deadline=None)
@given(product=products, starts_on=days_in_year,
       length=st.one_of(st.none(), st.integers(0, 300)),
       jumps=st.lists(st.integers(0, 70), min_size=1, max_size=12))
def test_every_covered_month_is_charged_once_prorated_by_its_days(
        product: RecurringProduct, starts_on: date, length: int | None,
        jumps: list[int]) -> None:
    ends_on = None if length is None else starts_on + timedelta(days=length)
    run_days, today = [], YEAR_START
    for jump in jumps:  # the scheduler runs now and then, with gaps (down for weeks)
        today += timedelta(days=jump)
        run_days.append(today)
    table = plan(product, starts_on, ends_on, run_days)
    last_run = run_days[-1]
    if last_run < starts_on:
        assert table == {}
        return
    assert ("setup" in table) == (product.setup_product is not None)
    last_day = last_run if ends_on is None else min(last_run, ends_on)
    months = {period_of(starts_on + timedelta(days=n))
              for n in range((last_day - starts_on).days + 1)}
    assert set(table) - {"setup"} == months
    for period in months:
        charge = table[period]
        days = covered_days(period, starts_on, ends_on)
        in_month = calendar.monthrange(*map(int, period.split("-")))[1]
        assert charge.due_on == max(month_start(period), starts_on)
        assert charge.due_on <= last_run
        if product.prorate and days < in_month:
            assert (charge.days, charge.days_in_period) == (days, in_month)
        else:
            assert charge.days is None
        whole = prorated_micros(2_000_000, 2, None, None)
        assert 0 < prorated_micros(2_000_000, 2, charge.days, charge.days_in_period) <= whole


@settings(max_examples=300, deadline=None)
@given(starts_on=days_in_year, today=days_in_year, at=st.sampled_from(["now", "period_end"]),
       length=st.one_of(st.none(), st.integers(0, 300)))
def test_a_cancellation_never_extends_the_service_nor_charges_before_the_start(
        starts_on: date, today: date, at: str, length: int | None) -> None:
    ends_on = None if length is None else starts_on + timedelta(days=length)
    end = cancellation_end(at, today, starts_on, ends_on)  # type: ignore[arg-type]
    if ends_on is not None:
        assert end <= ends_on
    if at == "now" and today < starts_on:
        product = RecurringProduct("vmn", "vmn_setup", prorate=True)
        assert charges_due(product, 1, starts_on, end, date(2028, 1, 1)) == []
    if today >= starts_on:  # a started item keeps today (it was charged for it)
        assert end >= min(today, ends_on or today)
        if at == "now":
            assert end == min(today, ends_on or today)
        else:
            assert end.month == today.month or end == ends_on


@settings(max_examples=300, deadline=None)
@given(unit=st.integers(0, 10**9), quantity=st.integers(1, 1000), month=st.integers(1, 12),
       year=st.integers(2026, 2030))
def test_the_prorated_parts_of_a_month_add_up_to_the_whole_within_rounding(
        unit: int, quantity: int, month: int, year: int) -> None:
    in_month = calendar.monthrange(year, month)[1]
    whole = prorated_micros(unit, quantity, None, None)
    for split in range(1, in_month):
        first = prorated_micros(unit, quantity, split, in_month)
        rest = prorated_micros(unit, quantity, in_month - split, in_month)
        assert abs(first + rest - whole) <= 1
