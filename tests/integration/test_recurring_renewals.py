"""Renewals over PostgreSQL with a model of the ledger: charged once per item and period,
in order, caught up after a gap, never twice with two schedulers or after a crash; past due,
suspended and resumed on payment; cancellations and bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any
from uuid import UUID

import msgspec
import pytest
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import (
    ChangeRecurringPlan,
    CreateRecurringItem,
    RecurringItemView,
)
from invoicing_service.recurring.app.items import ConflictingIdempotencyKey
from invoicing_service.recurring.domain import (
    InvalidItem,
    ItemCancelled,
    ReferenceInUse,
    UnknownProduct,
)
from tests.conftest import Infra
from tests.integration.recurring_fixtures import (
    LedgerDown,
    ManualClock,
    ModelLedger,
    fetch,
    fresh_pool,
    items,
    renewals,
)

pytestmark = pytest.mark.integration
POUND = 1_000_000


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[AsyncConnectionPool]:
    built = await fresh_pool(infra, "recurring_test")
    try:
        yield built
    finally:
        await built.close()


def new_item(product: str = "vmn", reference: str | None = None, *, quantity: int = 1,
             starts_on: date, ends_on: date | None = None) -> CreateRecurringItem:
    return CreateRecurringItem(product=product, quantity=quantity,
                               reference=reference or f"+4477{uuid.uuid4().int % 10**12:012d}",
                               starts_on=starts_on, ends_on=ends_on)


async def create(pool: AsyncConnectionPool, ledger: ModelLedger, clock: ManualClock,
                 account: UUID, body: CreateRecurringItem, key: str | None = None
                 ) -> RecurringItemView:
    run = renewals(pool, ledger, clock)
    raw = msgspec.json.encode(body)
    response, _ = await items(pool, run).create(account, body, key or uuid.uuid4().hex,
                                                raw.hex())
    return msgspec.json.decode(response, type=RecurringItemView)


def keys_of(item: RecurringItemView | str, ledger: ModelLedger) -> list[str]:
    item_id = item if isinstance(item, str) else item.item_id
    return sorted(k for k in ledger.entries if k.startswith(f"recurring:{item_id}:"))


async def outbox_subjects(pool: AsyncConnectionPool) -> list[str]:
    return [row[0] for row in await fetch(pool, "SELECT subject FROM outbox ORDER BY outbox_id")]


async def test_an_item_starting_today_is_charged_its_setup_and_prorated_first_month(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime(2026, 12, 15, 9, 0).astimezone())
    clock.set_day(date(2026, 12, 15))
    account = uuid.uuid4()
    view = await create(pool, ledger, clock, account, new_item(starts_on=date(2026, 12, 15)))
    assert view.status == "active"
    assert [(c.period, c.status, c.days, c.days_in_period) for c in view.charges] == [
        ("setup", "charged", None, None), ("2026-12", "charged", 17, 31)]
    assert [amount for _, amount in ledger.entries.values()] == [2 * POUND, 1_096_774]
    assert await outbox_subjects(pool) == ["invoicing.v1.recurring.charged"] * 2
    history = await fetch(pool, "SELECT kind FROM recurring_item_events ORDER BY event_seq")
    assert [h[0] for h in history] == ["created", "charged", "charged"]


async def test_the_next_month_is_charged_on_the_first_once(pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 20))
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 11, 20)))
    run = renewals(pool, ledger, clock)
    clock.set_day(date(2026, 11, 30))
    assert (await run.run()).charged == 0
    clock.set_day(date(2026, 12, 1))
    assert (await run.run()).charged == 1
    assert (await run.run()).charged == 0
    assert keys_of(view, ledger) == [f"recurring:{view.item_id}:{p}"
                                     for p in ("2026-11", "2026-12", "setup")]


async def test_months_missed_while_down_are_charged_once_in_order(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 9, 1))  # created ahead of its start
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 9, 10)))
    assert view.charges == []
    clock.set_day(date(2027, 1, 3))  # the scheduler was down since
    counts = await renewals(pool, ledger, clock).run()
    assert counts.charged == 6
    assert ledger.calls == [f"recurring:{view.item_id}:{p}" for p in
                            ("setup", "2026-09", "2026-10", "2026-11", "2026-12", "2027-01")]
    assert ledger.entries[f"recurring:{view.item_id}:2026-09"][1] == 1_400_000  # 21/30
    assert (await renewals(pool, ledger, clock).run()).charged == 0


async def test_two_schedulers_never_charge_the_same_renewal_twice(
        infra: Infra, pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(delay_s=0.002), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    created = [await create(pool, ledger, clock, uuid.uuid4(),
                            new_item(starts_on=date(2026, 12, 1))) for _ in range(60)]
    clock.set_day(date(2027, 2, 1))
    other = await fresh_pool_same_schema(infra)
    try:
        first = renewals(pool, ledger, clock, batch_size_max=7)
        second = renewals(other, ledger, clock, batch_size_max=7)
        await first.plan(clock().date())  # both then find the same due renewals
        counts = await asyncio.gather(first.run(), second.run())
    finally:
        await other.close()
    assert counts[0].charged > 0 and counts[1].charged > 0, "both took a share"
    assert counts[0].charged + counts[1].charged == 60 * 4
    assert len(ledger.calls) == len(set(ledger.calls)) == 60 * 4  # no call made twice
    for item in created:
        assert len(keys_of(item, ledger)) == 4


async def fresh_pool_same_schema(infra: Infra) -> AsyncConnectionPool:
    from services.database import create_pool
    other = create_pool(infra.database_url, "recurring_test", max_size=4, name="second")
    await other.open(wait=True)
    return other


async def test_a_run_that_dies_mid_renewals_leaves_each_charged_once_after_restart(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    created = [await create(pool, ledger, clock, uuid.uuid4(),
                            new_item(starts_on=date(2026, 11, 2))) for _ in range(20)]
    clock.set_day(date(2027, 1, 1))
    ledger.die_after = 25  # the ledger charged 26 keys, then the run died before committing
    with pytest.raises(LedgerDown):
        await renewals(pool, ledger, clock, batch_size_max=50).run()
    assert await fetch(pool, "SELECT count(*) FROM recurring_charges WHERE status = 'charged'") \
        == [(0,)], "the run's transaction rolled back"
    ledger.die_after = None
    counts = await renewals(pool, ledger, clock).run()
    assert counts.charged == 20 * 4
    assert len(ledger.entries) == 20 * 4  # each charged once in the ledger
    for item in created:
        assert len(keys_of(item, ledger)) == 4
    events = await fetch(pool, "SELECT count(*) FROM outbox"
                         " WHERE subject = 'invoicing.v1.recurring.charged'")
    assert events == [(80,)]


async def test_a_refused_renewal_makes_the_item_past_due_and_a_top_up_resumes_it_once(
        pool: AsyncConnectionPool) -> None:
    account = uuid.uuid4()
    ledger, clock = ModelLedger(prepay={account: 10 * POUND}), ManualClock(
        datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, account, new_item(starts_on=date(2026, 11, 1)))
    assert ledger.balance(account) == 6 * POUND  # setup + November
    ledger.prepay[account] = POUND  # spent elsewhere
    clock.set_day(date(2026, 12, 1))
    run = renewals(pool, ledger, clock)
    counts = await run.run()
    assert (counts.charged, counts.refused) == (0, 1)
    (status,) = await fetch(pool, "SELECT status FROM recurring_items")
    assert status == ("past_due",)
    assert ledger.balance(account) == POUND, "a refusal takes nothing"
    # a second run the same day does not retry (daily), nor announce again
    assert (await run.run()).refused == 0
    ledger.prepay[account] += 5 * POUND  # a top-up
    counts = await run.retry_account(account)
    assert (counts.charged, counts.resumed) == (1, 1)
    assert ledger.balance(account) == 4 * POUND
    assert (await run.retry_account(account)).charged == 0
    assert await outbox_subjects(pool) == [
        "invoicing.v1.recurring.charged", "invoicing.v1.recurring.charged",
        "invoicing.v1.recurring.past_due", "invoicing.v1.recurring.charged",
        "invoicing.v1.recurring.resumed"]
    assert len(keys_of(view, ledger)) == 3


async def test_past_due_past_the_grace_is_suspended_and_paying_charges_the_missed_months_once(
        pool: AsyncConnectionPool) -> None:
    account = uuid.uuid4()
    ledger, clock = ModelLedger(prepay={account: 4 * POUND}), ManualClock(
        datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, account, new_item(starts_on=date(2026, 11, 1)))
    run = renewals(pool, ledger, clock, grace_days=7)
    clock.set_day(date(2026, 12, 1))
    assert (await run.run()).refused == 1
    clock.set_day(date(2026, 12, 7))
    assert (await run.run()).suspended == 0, "within the grace"
    clock.set_day(date(2026, 12, 9))
    counts = await run.run()
    assert counts.suspended == 1 and counts.refused == 1  # the daily retry, still short
    clock.set_day(date(2027, 1, 2))
    await run.run()  # January is owed too, planned while suspended
    ledger.prepay[account] = 10 * POUND
    counts = await run.retry_account(account)
    assert (counts.charged, counts.resumed) == (2, 1)
    assert ledger.balance(account) == 6 * POUND
    assert keys_of(view, ledger) == [f"recurring:{view.item_id}:{p}" for p in
                                     ("2026-11", "2026-12", "2027-01", "setup")]
    (status,) = await fetch(pool, "SELECT status FROM recurring_items")
    assert status == ("active",)
    subjects = await outbox_subjects(pool)
    assert subjects.count("invoicing.v1.recurring.suspended") == 1
    assert subjects.count("invoicing.v1.recurring.past_due") == 1
    assert subjects[-1] == "invoicing.v1.recurring.resumed"


async def test_cancel_at_period_end_charges_no_later_month_and_ends_the_item(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 11, 1)))
    run = renewals(pool, ledger, clock)
    clock.set_day(date(2026, 11, 20))
    cancelled = await items(pool, run).cancel(UUID(view.item_id), "period_end", "test")
    assert (cancelled.status, cancelled.ends_on) == ("active", date(2026, 11, 30))
    clock.set_day(date(2026, 12, 1))
    counts = await run.run()
    assert (counts.charged, counts.ended) == (0, 1)
    (status,) = await fetch(pool, "SELECT status FROM recurring_items")
    assert status == ("cancelled",)
    # the reference is free again
    again = await create(pool, ledger, clock, uuid.uuid4(),
                         new_item(reference=view.reference, starts_on=date(2026, 12, 1)))
    assert again.status == "active"


async def test_cancel_now_before_the_start_charges_nothing(pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 12, 5)))
    run = renewals(pool, ledger, clock)
    cancelled = await items(pool, run).cancel(UUID(view.item_id), "now", "test")
    assert cancelled.status == "cancelled"
    clock.set_day(date(2027, 3, 1))
    assert (await run.run()).charged == 0
    assert ledger.calls == []


@pytest.mark.parametrize("body, error", [
    ({"product": "no_such_thing"}, UnknownProduct),
    ({"product": "vmn_setup"}, UnknownProduct),  # a setup product does not recur
    ({"ends_on": date(2026, 11, 30)}, InvalidItem),
])
async def test_bad_items_are_refused_and_nothing_is_written(
        pool: AsyncConnectionPool, body: dict[str, Any], error: type[Exception]) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 12, 1))
    fields: dict[str, Any] = {"starts_on": date(2026, 12, 1), **body}
    with pytest.raises(error):
        await create(pool, ledger, clock, uuid.uuid4(), new_item(**fields))
    assert await fetch(pool, "SELECT count(*) FROM recurring_items") == [(0,)]
    assert await fetch(pool, "SELECT count(*) FROM recurring_item_events") == [(0,)]
    assert ledger.calls == []


async def test_a_second_live_item_with_the_same_reference_is_refused(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 12, 1))
    await create(pool, ledger, clock, uuid.uuid4(), new_item(reference="PIZZA",
                                                             product="shortcode_keyword",
                                                             starts_on=date(2026, 12, 1)))
    calls = len(ledger.calls)
    with pytest.raises(ReferenceInUse):
        await create(pool, ledger, clock, uuid.uuid4(), new_item(
            reference="PIZZA", product="shortcode_keyword", starts_on=date(2026, 12, 10)))
    assert await fetch(pool, "SELECT count(*) FROM recurring_items") == [(1,)]
    assert len(ledger.calls) == calls


async def test_a_creation_retried_with_its_key_answers_the_first(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 12, 1))
    account, body = uuid.uuid4(), new_item(starts_on=date(2026, 12, 1))
    first = await create(pool, ledger, clock, account, body, key="k-1")
    again = await create(pool, ledger, clock, account, body, key="k-1")
    assert again == first
    assert await fetch(pool, "SELECT count(*) FROM recurring_items") == [(1,)]
    with pytest.raises(ConflictingIdempotencyKey):
        await create(pool, ledger, clock, account, new_item(starts_on=date(2026, 12, 2)),
                     key="k-1")


async def test_a_ledger_that_is_away_leaves_the_renewal_pending_for_a_later_run(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(unavailable=1), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 12, 1))
    view = await create(pool, ledger, clock, uuid.uuid4(),
                        new_item(product="shortcode_keyword", starts_on=date(2026, 12, 1)))
    assert [c.status for c in view.charges] == ["pending", "pending"]
    run = renewals(pool, ledger, clock)
    assert (await run.run()).charged == 0, "waits before trying again"
    clock.advance(minutes=5)
    assert (await run.run()).charged == 2
    assert (await run.run()).charged == 0



async def test_a_plan_change_takes_effect_next_month_and_this_month_keeps_its_plan(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 11, 1)))
    run = renewals(pool, ledger, clock)
    clock.set_day(date(2026, 11, 20))
    changed = await items(pool, run).change_plan(
        UUID(view.item_id), ChangeRecurringPlan(quantity=3), "test")
    assert changed.pending_change is not None
    assert (changed.pending_change.quantity, changed.pending_change.from_period) == (3, "2026-12")
    clock.set_day(date(2027, 1, 1))  # down through December: caught up on the new plan
    assert (await run.run()).charged == 2
    amounts = {key.rsplit(":", 1)[1]: amount for key, (_, amount) in ledger.entries.items()}
    assert amounts == {"setup": 2 * POUND, "2026-11": 2 * POUND, "2026-12": 6 * POUND,
                       "2027-01": 6 * POUND}
    (row,) = await fetch(pool, "SELECT quantity, pending_from FROM recurring_items")
    assert row == (3, None)


async def test_a_plan_change_to_an_unknown_product_or_of_a_cancelled_item_is_refused(
        pool: AsyncConnectionPool) -> None:
    ledger, clock = ModelLedger(), ManualClock(datetime.now().astimezone())
    clock.set_day(date(2026, 11, 1))
    view = await create(pool, ledger, clock, uuid.uuid4(), new_item(starts_on=date(2026, 11, 1)))
    book = items(pool, renewals(pool, ledger, clock))
    with pytest.raises(UnknownProduct):
        await book.change_plan(UUID(view.item_id), ChangeRecurringPlan(product="nope"), "t")
    await book.cancel(UUID(view.item_id), "period_end", "t")
    with pytest.raises(ItemCancelled):
        await book.change_plan(UUID(view.item_id), ChangeRecurringPlan(quantity=2), "t")
    (row,) = await fetch(pool, "SELECT pending_from FROM recurring_items")
    assert row == (None,)
