"""Recurring items: what is owed for a number or a keyword, month by month. Pure: no clock,
no I/O; the app passes `today`.

The rules (docs/recurring.md):
- the setup fee (the product's setup product, if it has one) is charged once, on starts_on;
- the monthly fee is charged per calendar month, in advance: the month of starts_on on
  starts_on, then every later month on its 1st;
- a month the item does not cover whole is prorated by days when the product says so
  (`prorate`, the default): days covered / days in the month, rounded half up by the ledger.
  Days are counted inclusively: an item starting on 15 December covers 17 of its 31 days;
  one ending (ends_on, the last day of service) on 10 March covers 10 of 31. Products with
  `prorate` off are charged the whole month whenever they cover any of it;
- an item is charged for every month from its start to its end (or to today, if it has no
  end), each exactly once: the app keeps one charge row per (item, period), the ledger one
  entry per charge key `recurring:<item_id>:<period>`.

Lifecycle: active -> past_due (a prepay renewal refused for funds) -> suspended (the grace
ran out unpaid); a successful retry makes either active again; cancelled is final.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Literal

Status = Literal["active", "past_due", "suspended", "cancelled"]
STATUSES: Final = ("active", "past_due", "suspended", "cancelled")
# Items still owing: charges are planned and collected for them (suspended ones are planned
# and collected when paid, "charges what was missed").
OPEN_STATUSES: Final = ("active", "past_due", "suspended")
SETUP: Final = "setup"
QUANTITY_MAX: Final = 1_000_000


class RecurringError(Exception):
    code = "recurring_error"


class UnknownProduct(RecurringError):
    code = "unknown_product"


class InvalidItem(RecurringError):
    code = "invalid_item"


class ReferenceInUse(RecurringError):
    code = "reference_in_use"


class ItemNotFound(RecurringError):
    code = "item_not_found"


class ItemCancelled(RecurringError):
    code = "item_cancelled"


class InsufficientFunds(RecurringError):
    """The ledger refused the new plan's charge for funds: nothing changed."""

    code = "insufficient_funds"


class LedgerRefusal(RecurringError):
    """The ledger will not take a charge or credit as sent (unknown account or product,
    closed account)."""

    code = "ledger_refused"


class LedgerUnavailable(RecurringError):
    """The ledger could not be reached: retry with the same Idempotency-Key."""

    code = "ledger_unavailable"


class ItemNotChangeable(RecurringError):
    """An immediate plan change needs an item in service whose current month is paid:
    not suspended, not past due, not ended, its month charged."""

    code = "item_not_changeable"


@dataclass(frozen=True, slots=True)
class RecurringProduct:
    key: str
    setup_product: str | None
    prorate: bool
    # when a plan change takes effect if the request does not say: "next_period" or "now"
    plan_change: Literal["next_period", "now"] = "next_period"


@dataclass(frozen=True, slots=True)
class PlannedCharge:
    period: str  # "setup" or "YYYY-MM"
    product: str
    quantity: int
    due_on: date
    days: int | None = None  # None: charged whole
    days_in_period: int | None = None


def period_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def month_start(period: str) -> date:
    year, month = (int(part) for part in period.split("-"))
    return date(year, month, 1)


def month_end(period: str) -> date:
    start = month_start(period)
    return start.replace(day=calendar.monthrange(start.year, start.month)[1])


def next_period(period: str) -> str:
    return period_of(month_end(period) + timedelta(days=1))


def periods_between(first: str, last: str) -> Iterator[str]:
    period = first
    while period <= last:
        yield period
        period = next_period(period)


def check_item(product: RecurringProduct | None, product_key: str, quantity: int,
               starts_on: date, ends_on: date | None) -> RecurringProduct:
    """Raise UnknownProduct / InvalidItem for an item that cannot be created."""
    if product is None:
        raise UnknownProduct(f"{product_key!r} is not a recurring product")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or \
            not 0 < quantity <= QUANTITY_MAX:
        raise InvalidItem(f"quantity must be 1-{QUANTITY_MAX}")
    if ends_on is not None and ends_on < starts_on:
        raise InvalidItem("ends_on is before starts_on")
    return product


def month_charge(product: RecurringProduct, quantity: int, period: str, starts_on: date,
                 ends_on: date | None) -> PlannedCharge | None:
    """The monthly charge of one period, prorated by the days the item covers; None if the
    item covers none of it."""
    first, last = month_start(period), month_end(period)
    covered_from = max(first, starts_on)
    covered_to = last if ends_on is None else min(last, ends_on)
    if covered_to < covered_from:
        return None
    days = (covered_to - covered_from).days + 1
    days_in_period = (last - first).days + 1
    whole = days == days_in_period or not product.prorate
    return PlannedCharge(
        period=period, product=product.key, quantity=quantity, due_on=covered_from,
        days=None if whole else days, days_in_period=None if whole else days_in_period,
    )


def charges_due(product: RecurringProduct, quantity: int, starts_on: date,
                ends_on: date | None, today: date) -> list[PlannedCharge]:
    """Every charge due by `today` over the item's life, in the order they fall due (setup
    first). The caller keeps those it has not planned yet; a charge once planned is never
    re-planned, so an end set later does not change a month already charged."""
    if today < starts_on or (ends_on is not None and ends_on < starts_on):
        return []  # not started, or cancelled before it started
    planned: list[PlannedCharge] = []
    if product.setup_product is not None:
        planned.append(PlannedCharge(period=SETUP, product=product.setup_product,
                                     quantity=quantity, due_on=starts_on))
    last_day = today if ends_on is None else min(today, ends_on)
    for period in periods_between(period_of(starts_on), period_of(last_day)):
        charge = month_charge(product, quantity, period, starts_on, ends_on)
        if charge is not None:
            planned.append(charge)
    return planned


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A change of product or quantity from `from_period` on (the next period when asked)."""

    product: RecurringProduct
    quantity: int
    from_period: str


def charges_due_with_change(product: RecurringProduct, quantity: int, starts_on: date,
                            ends_on: date | None, today: date,
                            change: PlanChange | None) -> list[PlannedCharge]:
    """charges_due, with a pending plan change: periods before it keep the old plan (and the
    setup fee), periods from it are charged on the new one (no second setup fee)."""
    before = charges_due(product, quantity, starts_on, ends_on, today)
    if change is None:
        return before
    after = charges_due(change.product, change.quantity, starts_on, ends_on, today)
    return ([c for c in before if c.period == SETUP or c.period < change.from_period]
            + [c for c in after if c.period != SETUP and c.period >= change.from_period])


def cancellation_end(at: Literal["now", "period_end"], today: date, starts_on: date,
                     ends_on: date | None) -> date:
    """The last day of service after a cancellation; never later than an end already set.
    An item cancelled before it starts ends the day before its start: it is never charged."""
    if at == "now":
        end = max(today, starts_on - timedelta(days=1))
    else:
        end = month_end(period_of(max(today, starts_on)))
    return end if ends_on is None else min(end, ends_on)


def prorated_micros(unit_price_micros: int, quantity: int, days: int | None,
                    days_in_period: int | None) -> int:
    """The ledger's documented rule (docs/recurring.md): unit x quantity x days /
    days_in_period, rounded half up to a micro-unit; no days: the whole price. The ledger
    prices every charge with it; the credit of an immediate plan change needs it here."""
    whole = unit_price_micros * quantity
    if days is None or days_in_period is None:
        return whole
    return (2 * whole * days + days_in_period) // (2 * days_in_period)


@dataclass(frozen=True, slots=True)
class Segment:
    """What the item was last charged for the current month: the month's charge, or the
    charge of the last immediate plan change in it (from its day to the month's end)."""

    product: RecurringProduct
    quantity: int
    unit_price_micros: int
    amount_micros: int  # what the ledger charged for it
    starts_on: date  # its first day of service in the month


@dataclass(frozen=True, slots=True)
class ImmediateChange:
    """A plan change from `today` on: the segment's unused part credited back, the new plan
    charged for the rest of the month, both prorated by month_charge's days."""

    credit_micros: int
    used: PlannedCharge | None  # the segment's days before today (None: none used)
    charge: PlannedCharge  # the new plan from today to the month's end (or ends_on)


def immediate_change(segment: Segment, product: RecurringProduct, quantity: int,
                     today: date, ends_on: date | None) -> ImmediateChange:
    """The credit is the segment's charge less what its used days cost at its own unit
    price (never negative): so the month costs exactly the old plan's days plus the new
    plan's days, each prorated and rounded by the one rule, however many changes it sees.
    A product charged whole (`prorate` off) used any day of it: no credit."""
    period = period_of(today)
    if ends_on is not None and ends_on < today:
        raise ItemNotChangeable("the item's service has ended")
    used = None if today <= segment.starts_on else month_charge(
        segment.product, segment.quantity, period, segment.starts_on, today - timedelta(days=1))
    used_micros = 0 if used is None else prorated_micros(
        segment.unit_price_micros, segment.quantity, used.days, used.days_in_period)
    charge = month_charge(product, quantity, period, today, ends_on)
    assert charge is not None  # today is in the month and not past ends_on
    return ImmediateChange(credit_micros=max(0, segment.amount_micros - used_micros),
                           used=used, charge=charge)


def charge_key(item_id: str, period: str) -> str:
    """The ledger's idempotency key: one charge per item and period, however often sent."""
    return f"recurring:{item_id}:{period}"


def suspend_after(past_due_since: datetime, grace: timedelta) -> datetime:
    return past_due_since + grace


def is_ended(status: str, ends_on: date | None, today: date) -> bool:
    """An item past its last day of service (and not already cancelled) ends now."""
    return status != "cancelled" and ends_on is not None and ends_on < today
