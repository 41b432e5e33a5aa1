"""Renewals: plan what each recurring item owes, charge it through the ledger, and move the
item through past due, suspension and back.

Exactly once, in three parts:
- one `recurring_charges` row per (item, period), inserted ON CONFLICT DO NOTHING by the
  planner, so a period is planned once however many planners run;
- a renewal run locks the items it charges (`FOR UPDATE SKIP LOCKED`): a second scheduler
  process takes other items, never the same ones; an item's charges go in period order;
- the ledger's charge key `recurring:<item_id>:<period>` makes the call itself idempotent: a
  run killed after the ledger charged but before its transaction committed leaves the row
  pending, and the next run's call answers with the first charge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol
from uuid import UUID

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from contracts.http.ledger import CHARGES_PER_BATCH_MAX
from contracts.invoicing import (
    RecurringCharged,
    RecurringPastDue,
    RecurringResumed,
    RecurringSuspended,
)
from contracts.subjects import INVOICING_RECURRING_CHARGED
from invoicing_service.recurring.app import announce
from invoicing_service.recurring.app.ledger import (
    Charged,
    ChargeOutcome,
    CreditOutcome,
    FeeRequest,
    Refused,
    Rejected,
    Unavailable,
)
from invoicing_service.recurring.domain import (
    PlanChange,
    RecurringProduct,
    charge_key,
    charges_due_with_change,
    month_end,
    month_start,
    period_of,
    suspend_after,
)

log = structlog.get_logger(__name__)

Conn = psycopg.AsyncConnection[Any]
ITEM_COLUMNS: Final = ("item_id, account_id, product, quantity, reference, starts_on, ends_on,"
                       " status, past_due_since, planned_through, pending_product,"
                       " pending_quantity, pending_from")
# A charge the ledger could not be reached for waits this long (doubling per attempt, capped)
# before a renewal run tries it again.
UNAVAILABLE_WAIT_S_INITIAL: Final = 30
UNAVAILABLE_WAIT_S_MAX: Final = 3600
PLAN_BATCH_SIZE_MAX: Final = 1_000
# Items the set-based planner takes per statement (and transaction): the month's renewal
# of items that simply go on (the common case on the 1st) is planned in SQL, without
# loading the items here.
PLAN_SET_BATCH_SIZE_MAX: Final = 10_000
# Fees per call of the ledger's POST /v1/charges: a batch is one transaction there (the
# route takes up to CHARGES_PER_BATCH_MAX). An account's fees travel together (items are
# collected in account order), so the ledger loads and saves it once per batch.
LEDGER_BATCH_MAX: Final = CHARGES_PER_BATCH_MAX
# Transactions of the renewal run in flight at once in one process: while one waits for
# the ledger, another reads, locks and records. Each holds one pooled connection.
COLLECTORS_DEFAULT: Final = 2
NIL_UUID: Final = UUID(int=0)
_json_encoder = msgspec.json.Encoder()
ERROR_TEXT_MAX: Final = 500


class LedgerPort(Protocol):
    """What renewals need of the ledger (LedgerCharges; a fake in tests)."""

    async def charge_many(self, fees: Sequence[FeeRequest]) -> list[ChargeOutcome]: ...

    async def credit(self, account_id: UUID, key: str, amount: str, memo: str
                     ) -> CreditOutcome: ...


def items_sql(text: str) -> sql.Composed:
    """A query over recurring_items whose `{columns}` are the Item's."""
    return sql.SQL(text).format(columns=sql.SQL(ITEM_COLUMNS))


@dataclass(frozen=True, slots=True)
class Item:
    item_id: UUID
    account_id: UUID
    product: str
    quantity: int
    reference: str
    starts_on: date
    ends_on: date | None
    status: str
    past_due_since: datetime | None
    planned_through: str | None = None  # periods up to it are planned already
    pending_product: str | None = None  # a plan change from pending_from on
    pending_quantity: int | None = None
    pending_from: str | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Item:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class DueCharge:
    item_id: UUID
    period: str
    product: str
    quantity: int
    days: int | None
    days_in_period: int | None
    attempts: int
    status: str
    next_attempt_at: datetime


@dataclass(slots=True)
class RunCounts:
    planned: int = 0
    charged: int = 0
    refused: int = 0
    failed: int = 0
    suspended: int = 0
    ended: int = 0
    resumed: int = 0

    def add(self, other: RunCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class _Walk:
    """The renewal run's position in the pending charges, shared by its collectors."""

    account_id: UUID = NIL_UUID
    item_id: UUID = NIL_UUID
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class Clock:
    """The scheduler's clock: real time shifted by RECURRING_CLOCK_OFFSET_S."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Renewals:
    def __init__(self, pool: AsyncConnectionPool, ledger: LedgerPort, *, grace: timedelta,
                 retry_interval: timedelta, batch_size_max: int, concurrency: int,
                 clock: Callable[[], datetime], on_commit: Callable[[], None] | None = None,
                 collectors: int = COLLECTORS_DEFAULT) -> None:
        self.pool = pool
        self.ledger = ledger
        self.grace = grace
        self.retry_interval = retry_interval
        self.batch_size_max = batch_size_max
        self.clock = clock
        self._calls = asyncio.Semaphore(concurrency)
        self.collectors = max(1, collectors)
        # called after each commit that enqueued messages: wakes the outbox relay
        self.committed: Callable[[], None] = on_commit or (lambda: None)
        self._products: dict[str, RecurringProduct] | None = None

    # ------------------------------------------------------------------ the run

    async def run(self, today: date | None = None) -> RunCounts:
        """One pass of the scheduler: plan, charge what is due, retry past-due items whose
        retry time came, suspend those past their grace, end those past their last day."""
        now = self.clock()
        today = today or now.date()
        counts = RunCounts()
        counts.planned = await self.plan(today)
        counts.add(await self.charge_due(today, now))
        counts.add(await self.retry_owing(today, now))
        counts.suspended = await self.suspend_overdue(now)
        counts.ended = await self.end_items(today, now)
        return counts

    async def products(self, conn: Conn) -> dict[str, RecurringProduct]:
        if self._products is None:
            cursor = await conn.execute(
                "SELECT product_key, setup_product, prorate, plan_change"
                " FROM recurring_products WHERE kind = 'monthly'")
            self._products = {row[0]: RecurringProduct(row[0], row[1], row[2], row[3])
                              for row in await cursor.fetchall()}
        return self._products

    # ------------------------------------------------------------------ planning

    async def plan(self, today: date) -> int:
        """Insert the charge rows due by `today` of every item not yet planned this month:
        the items that simply go on in SQL (plan_month_set), then the others one by one.

        Walks the items once in id order (keyset): each batch is a range scan of the primary
        key, not a scan of every item from the start. Items another planner holds are
        skipped: it is planning them."""
        planned = await self.plan_month_set(today)
        period = period_of(today)
        after = UUID(int=0)
        while True:
            async with self.pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    items_sql("SELECT {columns} FROM recurring_items"
                              " WHERE item_id > %s AND status <> 'cancelled' AND starts_on <= %s"
                              " AND (planned_through IS NULL OR planned_through < %s)"
                              " ORDER BY item_id LIMIT %s FOR UPDATE SKIP LOCKED"),
                    (after, today, period, PLAN_BATCH_SIZE_MAX))
                items = [Item.from_row(row) for row in await cursor.fetchall()]
                if not items:
                    return planned
                after = items[-1].item_id
                planned += await self.plan_items(conn, items, today)
                await conn.execute(
                    "UPDATE recurring_items SET planned_through = %s WHERE item_id = ANY(%s)",
                    (period, [item.item_id for item in items]))

    async def plan_month_set(self, today: date) -> int:
        """The month's renewal of every item that planned last month and covers all of this
        one, with no plan change pending: one whole-month charge row each, in one statement
        per batch, as charges_due_with_change would plan it (no setup: it planned before;
        the month whole: it started before it and does not end in it). The rest (catch-up,
        starts, ends, plan changes) is left to the per-item planner."""
        period = period_of(today)
        first, last = month_start(period), month_end(period)
        previous = period_of(first - timedelta(days=1))
        planned = 0
        after = UUID(int=0)
        while True:
            async with self.pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "WITH batch AS ("
                    " SELECT item_id, account_id, product, quantity FROM recurring_items"
                    " WHERE item_id > %(after)s AND status <> 'cancelled'"
                    " AND planned_through = %(previous)s AND pending_from IS NULL"
                    " AND starts_on < %(first)s AND (ends_on IS NULL OR ends_on >= %(last)s)"
                    " ORDER BY item_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
                    " planned AS (INSERT INTO recurring_charges (item_id, period, account_id,"
                    " product, quantity, due_on) SELECT item_id, %(period)s, account_id,"
                    " product, quantity, %(first)s FROM batch"
                    " ON CONFLICT (item_id, period) DO NOTHING RETURNING 1),"
                    " marked AS (UPDATE recurring_items i SET planned_through = %(period)s"
                    " FROM batch WHERE i.item_id = batch.item_id RETURNING 1)"
                    " SELECT (SELECT count(*) FROM planned), (SELECT count(*) FROM marked),"
                    " (SELECT max(item_id::text) FROM batch)",
                    {"after": after, "previous": previous, "first": first, "last": last,
                     "period": period, "limit": PLAN_SET_BATCH_SIZE_MAX})
                row = await cursor.fetchone()
            assert row is not None
            inserted, marked, last_id = row
            planned += int(inserted)
            if not marked:
                return planned
            after = UUID(last_id)

    async def plan_items(self, conn: Conn, items: Sequence[Item], today: date) -> int:
        products = await self.products(conn)
        rows = []
        changing = []
        for item in items:
            product = products[item.product]
            change = None
            if item.pending_from is not None and item.pending_product is not None \
                    and item.pending_quantity is not None:
                change = PlanChange(products[item.pending_product], item.pending_quantity,
                                    item.pending_from)
                if item.pending_from <= period_of(today):
                    changing.append(item)
            for charge in charges_due_with_change(product, item.quantity, item.starts_on,
                                                  item.ends_on, today, change):
                if item.planned_through is not None and (
                        charge.period == "setup" or charge.period <= item.planned_through):
                    continue  # planned by an earlier run: an old item plans one month a month
                rows.append((item.item_id, charge.period, item.account_id, charge.product,
                             charge.quantity, charge.days, charge.days_in_period,
                             charge.due_on))
        for item in changing:  # the change took effect with the period just planned
            await conn.execute(
                "UPDATE recurring_items SET product = pending_product,"
                " quantity = pending_quantity, pending_product = NULL, pending_quantity = NULL,"
                " pending_from = NULL, updated_at = %s WHERE item_id = %s",
                (self.clock(), item.item_id))
            await announce.record(conn, item.item_id, item.account_id, "plan_changed",
                                  self.clock(), product=item.pending_product,
                                  quantity=item.pending_quantity, from_period=item.pending_from)
        if not rows:
            return 0
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO recurring_charges (item_id, period, account_id, product,"
                " quantity, days, days_in_period, due_on) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " %s) ON CONFLICT (item_id, period) DO NOTHING", rows)
        return len(rows)

    # ------------------------------------------------------------------ charging

    async def charge_due(self, today: date, now: datetime) -> RunCounts:
        """Charge the due renewals of active items, a batch of locked items at a time, with
        `collectors` batches in flight (each its own transaction).

        Candidates come from the pending charges in account order (keyset over a partial
        index of pending rows), so an account's items share a batch and a ledger call; those
        another scheduler holds are skipped (SKIP LOCKED) and the walk moves on, so two
        schedulers share the work and neither waits for the other."""
        counts = RunCounts()
        walk = _Walk()

        async def collector() -> None:
            while True:
                candidates = await self._next_candidates(walk, today, now)
                if not candidates:
                    return
                async with self.pool.connection() as conn, conn.transaction():
                    cursor = await conn.execute(
                        # cancelled: what was due up to the end is still owed
                        items_sql("SELECT {columns} FROM recurring_items"
                                  " WHERE item_id = ANY(%s) AND status IN ('active', 'cancelled')"
                                  " ORDER BY account_id, item_id FOR UPDATE SKIP LOCKED"),
                        (candidates,))
                    items = [Item.from_row(row) for row in await cursor.fetchall()]
                    if items:
                        counts.add(await self.collect(conn, items, ("pending",), today, now))
                if items:
                    self.committed()

        tasks = [asyncio.create_task(collector()) for _ in range(self.collectors)]
        try:
            await asyncio.gather(*tasks)  # the first failure raises as itself
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return counts

    async def _next_candidates(self, walk: _Walk, today: date, now: datetime) -> list[UUID]:
        """The next batch of items with a due pending charge, after the walk's position."""
        async with walk.lock:
            if walk.done:
                return []
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT account_id, item_id FROM recurring_charges"
                    " WHERE status = 'pending' AND (account_id, item_id) > (%s, %s)"
                    " AND due_on <= %s AND next_attempt_at <= %s"
                    " GROUP BY account_id, item_id ORDER BY account_id, item_id LIMIT %s",
                    (walk.account_id, walk.item_id, today, now, self.batch_size_max))
                rows = await cursor.fetchall()
            if not rows:
                walk.done = True
                return []
            walk.account_id, walk.item_id = rows[-1]
            return [row[1] for row in rows]

    async def retry_owing(self, today: date, now: datetime) -> RunCounts:
        """The daily retry of past-due and suspended items."""
        counts = RunCounts()
        while True:
            async with self.pool.connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    items_sql("SELECT {columns} FROM recurring_items"
                    " WHERE status IN ('past_due', 'suspended')"
                    " AND (last_attempt_at IS NULL OR last_attempt_at <= %s)"
                    " ORDER BY item_id LIMIT %s FOR UPDATE SKIP LOCKED"),
                    (now - self.retry_interval, self.batch_size_max))
                items = [Item.from_row(row) for row in await cursor.fetchall()]
                if not items:
                    return counts
                counts.add(await self.collect(conn, items, ("pending", "refused"), today, now))
            self.committed()

    async def retry_account(self, account_id: UUID) -> RunCounts:
        """A top-up arrived: retry the account's past-due and suspended items now. Items
        another run holds are skipped: that run is charging them already."""
        now = self.clock()
        today = now.date()
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                items_sql("SELECT {columns} FROM recurring_items"
                " WHERE account_id = %s AND status IN ('past_due', 'suspended')"
                " ORDER BY created_at, item_id FOR UPDATE SKIP LOCKED"), (account_id,))
            items = [Item.from_row(row) for row in await cursor.fetchall()]
            # months that fell due since the last run are owed too: plan these items now
            await self.plan_items(conn, items, today)
            await conn.execute(
                "UPDATE recurring_items SET planned_through = %s WHERE item_id = ANY(%s)",
                (period_of(today), [item.item_id for item in items]))
            counts = await self.collect(conn, items, ("pending", "refused"), today, now)
        self.committed()
        return counts

    async def collect(self, conn: Conn, items: Sequence[Item], statuses: Sequence[str],
                      today: date, now: datetime) -> RunCounts:
        """Charge the due charges of locked `items` (calls concurrent across items, in period
        order within one), then record every outcome in the caller's transaction."""
        cursor = await conn.execute(
            "SELECT item_id, period, product, quantity, days, days_in_period, attempts,"
            " status, next_attempt_at FROM recurring_charges"
            " WHERE item_id = ANY(%s) AND status = ANY(%s)"
            # a refused charge was due when it was refused: always retried, so an item
            # resumes only once none is left
            " AND (status = 'refused' OR due_on <= %s)"
            " ORDER BY item_id, (period = 'setup') DESC, period",
            ([item.item_id for item in items], list(statuses), today))
        due: dict[UUID, list[DueCharge]] = {}
        for row in await cursor.fetchall():
            due.setdefault(row[0], []).append(DueCharge(*row))
        results = await self._charge_in_rounds(items, due, now)
        counts = RunCounts()
        # The common outcome in bulk (a few statements for the whole batch), then the rest
        # (refusals, failures, resumptions) one by one, after: an item's history stays in order.
        charged = [(item, charge, outcome) for item, outcomes in zip(items, results, strict=True)
                   for charge, outcome in outcomes if isinstance(outcome, Charged)]
        await self._record_charged(conn, charged, now)
        counts.charged = len(charged)
        for item, outcomes in zip(items, results, strict=True):
            await self._record_item(conn, item, outcomes, len(due.get(item.item_id, [])),
                                    now, counts)
        return counts

    async def _charge_in_rounds(self, items: Sequence[Item],
                                due: dict[UUID, list[DueCharge]], now: datetime
                                ) -> list[list[tuple[DueCharge, ChargeOutcome]]]:
        """Each item's due charges in period order: round k sends the k-th charge of every
        item still going, in batches of the ledger's POST /v1/charges (concurrent up to the
        setting). An item stops at its first charge not charged: later periods wait."""
        outcomes: dict[UUID, list[tuple[DueCharge, ChargeOutcome]]] = {
            item.item_id: [] for item in items}
        going = [item for item in items if due.get(item.item_id)]
        step = 0
        while going:
            round_ = []
            for item in going:
                charge = due[item.item_id][step]
                if charge.status == "pending" and charge.next_attempt_at > now:
                    continue  # the ledger was away for this one: it and later periods wait
                round_.append((item, charge))
            answers = await self._charge_round(round_)
            step += 1
            going = []
            for (item, charge), outcome in zip(round_, answers, strict=True):
                outcomes[item.item_id].append((charge, outcome))
                if isinstance(outcome, Charged) and len(due[item.item_id]) > step:
                    going.append(item)
        return [outcomes[item.item_id] for item in items]

    async def _charge_round(self, round_: Sequence[tuple[Item, DueCharge]]
                            ) -> list[ChargeOutcome]:
        fees = [FeeRequest(
            account_id=item.account_id, charge_key=charge_key(str(item.item_id), charge.period),
            product=charge.product, quantity=charge.quantity, reference=item.reference,
            period=None if charge.period == "setup" else charge.period,
            days=charge.days, days_in_period=charge.days_in_period,
        ) for item, charge in round_]

        async def send(chunk: Sequence[FeeRequest]) -> list[ChargeOutcome]:
            async with self._calls:
                return await self.ledger.charge_many(chunk)

        chunks = [fees[i:i + LEDGER_BATCH_MAX] for i in range(0, len(fees), LEDGER_BATCH_MAX)]
        answers = await asyncio.gather(*(send(chunk) for chunk in chunks))
        return [outcome for chunk in answers for outcome in chunk]

    async def _record_item(self, conn: Conn, item: Item,
                           outcomes: Sequence[tuple[DueCharge, ChargeOutcome]], due_count: int,
                           now: datetime, counts: RunCounts) -> None:
        for charge, outcome in outcomes:
            if isinstance(outcome, Charged):
                continue  # recorded in bulk by collect
            if isinstance(outcome, Refused):
                await self._record_refused(conn, item, charge, outcome, now)
                counts.refused += 1
            elif isinstance(outcome, Rejected):
                await conn.execute(
                    "UPDATE recurring_charges SET status = 'failed', attempts = attempts + 1,"
                    " last_error = %s WHERE item_id = %s AND period = %s",
                    (f"{outcome.status}: {outcome.detail}"[:ERROR_TEXT_MAX], item.item_id,
                     charge.period))
                await announce.record(conn, item.item_id, item.account_id, "charge_failed",
                                      now, period=charge.period, status=outcome.status,
                                      detail=outcome.detail)
                log.error("recurring.charge_rejected", item_id=str(item.item_id),
                          period=charge.period, status=outcome.status, detail=outcome.detail)
                counts.failed += 1
            elif isinstance(outcome, Unavailable):
                wait_s = min(UNAVAILABLE_WAIT_S_INITIAL * 2 ** charge.attempts,
                             UNAVAILABLE_WAIT_S_MAX)
                await conn.execute(
                    "UPDATE recurring_charges SET attempts = attempts + 1, last_error = %s"
                    " WHERE item_id = %s AND period = %s",
                    (outcome.detail[:ERROR_TEXT_MAX], item.item_id, charge.period))
                # The item's later periods wait with it: charged in order, and the next
                # run does not pick the item again before then.
                await conn.execute(
                    "UPDATE recurring_charges SET next_attempt_at = GREATEST(next_attempt_at,"
                    " %s) WHERE item_id = %s AND status = 'pending'",
                    (now + timedelta(seconds=wait_s), item.item_id))
                log.warning("recurring.ledger_unavailable", item_id=str(item.item_id),
                            period=charge.period, detail=outcome.detail)
        if item.status not in ("past_due", "suspended"):
            return
        settled = len(outcomes) == due_count and all(  # every owed charge went through
            isinstance(outcome, Charged) for _, outcome in outcomes)
        if settled:
            await self._resume(conn, item, now)
            counts.resumed += 1
        else:
            await conn.execute("UPDATE recurring_items SET last_attempt_at = %s"
                               " WHERE item_id = %s", (now, item.item_id))

    async def _record_charged(self, conn: Conn,
                              charged: Sequence[tuple[Item, DueCharge, Charged]],
                              now: datetime) -> None:
        """The batch's charged outcomes in three set-based statements (charge rows, history,
        outbox), each over arrays: no per-row round trip or statement. The arrays go in
        binary (`%b`): dumping them as text quoted every element, 39% of this process's CPU
        in the renewals benchmark (docs/benchmarks.md)."""
        if not charged:
            return
        item_ids, account_ids, periods, entry_ids, amounts, currencies = [], [], [], [], [], []
        charged_ats, unit_prices, history, msg_ids, payloads = [], [], [], [], []
        encode = _json_encoder.encode
        for item, charge, outcome in charged:
            fee = outcome.fee
            item_ids.append(item.item_id)
            account_ids.append(item.account_id)
            periods.append(charge.period)
            entry_ids.append(fee.entry_id)
            amounts.append(fee.amount)
            currencies.append(fee.currency)
            charged_ats.append(fee.occurred_at)
            unit_prices.append(fee.unit_price)
            history.append(encode({"period": charge.period, "entry_id": fee.entry_id,
                                   "amount": fee.amount, "currency": fee.currency}).decode())
            message = RecurringCharged(
                event_id=f"recurring.charged:{item.item_id}:{charge.period}",
                item_id=str(item.item_id), account_id=item.account_id, product=charge.product,
                quantity=charge.quantity, reference=item.reference, period=charge.period,
                entry_id=fee.entry_id, amount=fee.amount, currency=fee.currency,
                charged_at=fee.occurred_at,
            )
            msg_ids.append(message.event_id)  # the subject's Nats-Msg-Id field
            payloads.append(encode(message))
        await conn.execute(
            "UPDATE recurring_charges c SET status = 'charged', attempts = c.attempts + 1,"
            " entry_id = u.entry_id, amount = u.amount, currency = u.currency,"
            " charged_at = u.charged_at, unit_price = u.unit_price, last_error = NULL"
            " FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[],"
            " %b::timestamptz[], %b::text[]) AS u(item_id, period, entry_id, amount, currency,"
            " charged_at, unit_price) WHERE c.item_id = u.item_id AND c.period = u.period",
            (item_ids, periods, entry_ids, amounts, currencies, charged_ats, unit_prices))
        await conn.execute(
            "INSERT INTO recurring_item_events (item_id, account_id, kind, data, occurred_at)"
            " SELECT h.item_id, h.account_id, 'charged', h.data::jsonb, %s"
            " FROM unnest(%b::uuid[], %b::uuid[], %b::text[]) AS h(item_id, account_id, data)",
            (now, item_ids, account_ids, history))
        await conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload)"
            " SELECT %s, m.msg_id, m.payload FROM unnest(%b::text[], %b::bytea[])"
            " AS m(msg_id, payload)", (INVOICING_RECURRING_CHARGED, msg_ids, payloads))
        await conn.execute("SELECT pg_notify(%s, '')", (announce.OUTBOX_CHANNEL,))

    async def _record_refused(self, conn: Conn, item: Item, charge: DueCharge,
                              outcome: Refused, now: datetime) -> None:
        await conn.execute(
            "UPDATE recurring_charges SET status = 'refused', attempts = attempts + 1,"
            " last_error = %s WHERE item_id = %s AND period = %s",
            (outcome.detail[:ERROR_TEXT_MAX], item.item_id, charge.period))
        if item.status != "active":
            return
        await conn.execute(
            "UPDATE recurring_items SET status = 'past_due', past_due_since = %s,"
            " last_attempt_at = %s, updated_at = %s WHERE item_id = %s",
            (now, now, now, item.item_id))
        await announce.record(conn, item.item_id, item.account_id, "past_due", now,
                              period=charge.period, detail=outcome.detail)
        await announce.announce_past_due(conn, RecurringPastDue(
            event_id=f"recurring.past_due:{item.item_id}:{charge.period}",
            item_id=str(item.item_id), account_id=item.account_id, product=item.product,
            reference=item.reference, period=charge.period,
            suspend_after=suspend_after(now, self.grace), occurred_at=now,
        ))

    async def _resume(self, conn: Conn, item: Item, now: datetime) -> None:
        await conn.execute(
            "UPDATE recurring_items SET status = 'active', past_due_since = NULL,"
            " suspended_at = NULL, last_attempt_at = %s, updated_at = %s WHERE item_id = %s",
            (now, now, item.item_id))
        await announce.record(conn, item.item_id, item.account_id, "resumed", now,
                              was=item.status)
        since = item.past_due_since.isoformat() if item.past_due_since else now.isoformat()
        await announce.announce_resumed(conn, RecurringResumed(
            event_id=f"recurring.resumed:{item.item_id}:{since}"[:128],
            item_id=str(item.item_id), account_id=item.account_id, product=item.product,
            reference=item.reference, occurred_at=now,
        ))

    # ------------------------------------------------------------------ lifecycle

    async def suspend_overdue(self, now: datetime) -> int:
        """Suspend the past-due items whose grace ran out unpaid."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                items_sql("UPDATE recurring_items SET status = 'suspended', suspended_at = %s,"
                " updated_at = %s WHERE status = 'past_due' AND past_due_since <= %s"
                " RETURNING {columns}"), (now, now, now - self.grace))
            items = [Item.from_row(row) for row in await cursor.fetchall()]
            for item in items:
                since = item.past_due_since or now
                await announce.record(conn, item.item_id, item.account_id, "suspended", now,
                                      past_due_since=since.isoformat())
                await announce.announce_suspended(conn, RecurringSuspended(
                    event_id=f"recurring.suspended:{item.item_id}:{since.isoformat()}"[:128],
                    item_id=str(item.item_id), account_id=item.account_id,
                    product=item.product, reference=item.reference, past_due_since=since,
                    occurred_at=now,
                ))
        if items:
            self.committed()
        return len(items)

    async def end_items(self, today: date, now: datetime) -> int:
        """Active items past their last day of service are cancelled (their months were all
        charged in advance). Past-due ones stay until paid."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE recurring_items SET status = 'cancelled', cancelled_at = %s,"
                " updated_at = %s WHERE status = 'active' AND ends_on < %s"
                # an end waits for the renewals still to collect (the ledger was away)
                " AND NOT EXISTS (SELECT 1 FROM recurring_charges c"
                "  WHERE c.item_id = recurring_items.item_id AND c.status = 'pending')"
                " RETURNING item_id, account_id, ends_on", (now, now, today))
            rows = await cursor.fetchall()
            for item_id, account_id, ends_on in rows:
                await announce.record(conn, item_id, account_id, "ended", now,
                                      ends_on=ends_on.isoformat())
        return len(rows)
