"""Recurring items: create (operator, idempotent), list with their charges, cancel.

An item that starts today or earlier is charged in the transaction that creates it (setup
fee and first month, through the ledger): "as soon as the item starts". Its id is derived
from the account and the Idempotency-Key, so a creation retried after a crash names the same
item, and the ledger's charge keys answer the retry with the charges already made.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any, Final, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import (
    ChangeRecurringPlan,
    CreateRecurringItem,
    PendingPlanChange,
    RecurringChargeView,
    RecurringItemsPage,
    RecurringItemView,
)
from invoicing_service.recurring.app import announce
from invoicing_service.recurring.app.renewals import Item, Renewals, items_sql
from invoicing_service.recurring.domain import (
    InvalidItem,
    ItemCancelled,
    ItemNotFound,
    RecurringError,
    ReferenceInUse,
    cancellation_end,
    check_item,
    month_charge,
    next_period,
    period_of,
)

Conn = psycopg.AsyncConnection[Any]
ITEM_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://billing.example/invoicing/recurring-items")
ITEMS_PER_ACCOUNT_MAX: Final = 1_000
_encoder = msgspec.json.Encoder()


class ConflictingIdempotencyKey(RecurringError):
    code = "idempotency_key_reused"


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def item_id_for(account_id: UUID, idempotency_key: str) -> UUID:
    return uuid5(ITEM_NAMESPACE, f"{account_id}:{idempotency_key}")


class RecurringItems:
    def __init__(self, pool: AsyncConnectionPool, renewals: Renewals) -> None:
        self.pool = pool
        self.renewals = renewals

    async def create(self, account_id: UUID, body: CreateRecurringItem, key: str,
                     body_hash: str) -> tuple[bytes, bool]:
        """(response, replayed)."""
        scope = f"create:{account_id}"
        item_id = item_id_for(account_id, key)
        try:
            return await self._create(account_id, body, scope, key, body_hash, item_id)
        except pg_errors.UniqueViolation:
            # The same key in flight twice: the other request created it first.
            stored = await self._stored(scope, key, body_hash)
            if stored is None:
                raise
            return stored, True

    async def _stored(self, scope: str, key: str, body_hash: str) -> bytes | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT request_hash, response FROM recurring_requests"
                " WHERE scope = %s AND key = %s", (scope, key))
            row = await cursor.fetchone()
        if row is None:
            return None
        if row[0] != body_hash:
            raise ConflictingIdempotencyKey(
                "this Idempotency-Key was used with a different request")
        return bytes(row[1])

    async def _create(self, account_id: UUID, body: CreateRecurringItem, scope: str, key: str,
                      body_hash: str, item_id: UUID) -> tuple[bytes, bool]:
        stored = await self._stored(scope, key, body_hash)
        if stored is not None:
            return stored, True
        now = self.renewals.clock()
        today = now.date()
        async with self.pool.connection() as conn, conn.transaction():
            products = await self.renewals.products(conn)
            check_item(products.get(body.product), body.product, body.quantity,
                       body.starts_on, body.ends_on)
            await self._insert(conn, item_id, account_id, body, now)
            await announce.record(conn, item_id, account_id, "created", now,
                                  product=body.product, quantity=body.quantity,
                                  reference=body.reference,
                                  starts_on=body.starts_on.isoformat(),
                                  ends_on=body.ends_on.isoformat() if body.ends_on
                                  else None)
            if body.starts_on <= today:
                item = await _lock(conn, item_id)
                await self.renewals.plan_items(conn, [item], today)
                await conn.execute("UPDATE recurring_items SET planned_through = %s"
                                   " WHERE item_id = %s", (period_of(today), item_id))
                await self.renewals.collect(conn, [item], ("pending",), today, now)
            (view,) = await item_views(conn, "i.item_id = %s", (item_id,))
            response = _encoder.encode(view)
            await conn.execute(
                "INSERT INTO recurring_requests (scope, key, request_hash, response)"
                " VALUES (%s, %s, %s, %s)", (scope, key, body_hash, response))
        self.renewals.committed()
        return response, False

    async def _insert(self, conn: Conn, item_id: UUID, account_id: UUID,
                      body: CreateRecurringItem, now: datetime) -> None:
        try:
            async with conn.transaction():  # a savepoint: the outer transaction survives
                await conn.execute(
                    "INSERT INTO recurring_items (item_id, account_id, product, quantity,"
                    " reference, starts_on, ends_on, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (item_id, account_id, body.product, body.quantity, body.reference,
                     body.starts_on, body.ends_on, now, now))
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "recurring_items_live_reference":
                raise ReferenceInUse(
                    f"{body.product} {body.reference!r} is already on a live item") from None
            raise

    async def list(self, account_id: UUID) -> RecurringItemsPage:
        async with self.pool.connection() as conn:
            views = await item_views(conn, "i.account_id = %s", (account_id,))
        return RecurringItemsPage(items=views)

    async def account_of(self, item_id: UUID) -> UUID:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT account_id FROM recurring_items WHERE item_id = %s", (item_id,))
            row = await cursor.fetchone()
        if row is None:
            raise ItemNotFound(f"recurring item {item_id} not found")
        return UUID(str(row[0]))

    async def cancel(self, item_id: UUID, at: Literal["now", "period_end"],
                     actor: str) -> RecurringItemView:
        """Cancel now (the service ends today) or at the end of the current month. Months
        already charged are not refunded; renewals not charged yet beyond the new end are
        dropped, and the month the end falls in is re-prorated if not charged yet.
        Cancelling a cancelled item changes nothing."""
        now = self.renewals.clock()
        today = now.date()
        async with self.pool.connection() as conn, conn.transaction():
            item = await _lock(conn, item_id)
            if item.status != "cancelled":
                end = cancellation_end(at, today, item.starts_on, item.ends_on)
                ends_now = at == "now" or end < today
                await conn.execute(
                    "UPDATE recurring_items SET ends_on = %s, updated_at = %s,"
                    " status = CASE WHEN %s THEN 'cancelled' ELSE status END,"
                    " cancelled_at = CASE WHEN %s THEN %s::timestamptz ELSE cancelled_at END"
                    " WHERE item_id = %s", (end, now, ends_now, ends_now, now, item_id))
                await self._trim_charges(conn, item, end)
                await announce.record(conn, item.item_id, item.account_id, "cancelled", now,
                                      cancel_at=at, ends_on=end.isoformat(), actor=actor)
            (view,) = await item_views(conn, "i.item_id = %s", (item_id,))
        return view

    async def change_plan(self, item_id: UUID, body: ChangeRecurringPlan,
                          actor: str) -> RecurringItemView:
        """A new product or quantity from the next calendar month on (replacing a change
        already pending). Refused for a cancelled item, an unknown product, or a product
        whose live item already has this reference."""
        now = self.renewals.clock()
        from_period = next_period(period_of(now.date()))
        async with self.pool.connection() as conn, conn.transaction():
            item = await _lock(conn, item_id)
            if item.status == "cancelled" or (item.ends_on is not None
                                              and period_of(item.ends_on) < from_period):
                raise ItemCancelled(f"recurring item {item_id} ends before {from_period}")
            products = await self.renewals.products(conn)
            product = body.product or item.product
            quantity = body.quantity or item.quantity
            check_item(products.get(product), product, quantity, item.starts_on, item.ends_on)
            if product != item.product:
                cursor = await conn.execute(
                    "SELECT 1 FROM recurring_items WHERE product = %s AND reference = %s"
                    " AND status <> 'cancelled' AND item_id <> %s",
                    (product, item.reference, item_id))
                if await cursor.fetchone() is not None:
                    raise ReferenceInUse(f"{product} {item.reference!r} is on a live item")
            await conn.execute(
                "UPDATE recurring_items SET pending_product = %s, pending_quantity = %s,"
                " pending_from = %s, updated_at = %s WHERE item_id = %s",
                (product, quantity, from_period, now, item_id))
            await announce.record(conn, item.item_id, item.account_id, "plan_change_requested",
                                  now, product=product, quantity=quantity,
                                  from_period=from_period, actor=actor)
            (view,) = await item_views(conn, "i.item_id = %s", (item_id,))
        return view

    async def _trim_charges(self, conn: Conn, item: Item, end: date) -> None:
        last_period = period_of(end)
        await conn.execute(
            "DELETE FROM recurring_charges WHERE item_id = %s"
            " AND status IN ('pending', 'refused')"
            " AND ((period = 'setup' AND %s < %s) OR (period <> 'setup' AND period > %s))",
            (item.item_id, end, item.starts_on, last_period))
        products = await self.renewals.products(conn)
        charge = month_charge(products[item.product], item.quantity, last_period,
                              item.starts_on, end)
        if charge is not None:
            await conn.execute(
                "UPDATE recurring_charges SET days = %s, days_in_period = %s WHERE item_id = %s"
                " AND period = %s AND status IN ('pending', 'refused')",
                (charge.days, charge.days_in_period, item.item_id, last_period))


async def _lock(conn: Conn, item_id: UUID) -> Item:
    cursor = await conn.execute(
        items_sql("SELECT {columns} FROM recurring_items WHERE item_id = %s FOR UPDATE"),
        (item_id,))
    row = await cursor.fetchone()
    if row is None:
        raise ItemNotFound(f"recurring item {item_id} not found")
    return Item.from_row(row)


async def item_views(conn: Conn, where: str, params: tuple[Any, ...]) -> list[RecurringItemView]:
    cursor = await conn.execute(sql.SQL(
        "SELECT i.item_id, i.account_id, i.product, i.quantity, i.reference, i.starts_on,"
        " i.ends_on, i.status, i.past_due_since, i.suspended_at, i.created_at,"
        " i.pending_product, i.pending_quantity, i.pending_from"
        " FROM recurring_items i WHERE {where} ORDER BY i.created_at DESC, i.item_id"
        " LIMIT {limit}").format(where=sql.SQL(where),
                                 limit=sql.Literal(ITEMS_PER_ACCOUNT_MAX)), params)
    items = await cursor.fetchall()
    if not items:
        return []
    cursor = await conn.execute(
        "SELECT item_id, period, product, quantity, days, days_in_period, due_on, status,"
        " amount, entry_id, attempts, charged_at FROM recurring_charges"
        " WHERE item_id = ANY(%s) ORDER BY item_id, (period = 'setup') DESC, period",
        ([row[0] for row in items],))
    charges: dict[UUID, list[RecurringChargeView]] = {}
    for row in await cursor.fetchall():
        charges.setdefault(row[0], []).append(RecurringChargeView(
            period=row[1], product=row[2], quantity=row[3], days=row[4],
            days_in_period=row[5], due_on=row[6], status=row[7], amount=row[8],
            entry_id=row[9], attempts=row[10], charged_at=_utc(row[11])))
    return [
        RecurringItemView(
            item_id=str(row[0]), account_id=row[1], product=row[2], quantity=row[3],
            reference=row[4], starts_on=row[5], ends_on=row[6], status=row[7],
            past_due_since=_utc(row[8]), suspended_at=_utc(row[9]),
            pending_change=PendingPlanChange(product=row[11], quantity=row[12],
                                             from_period=row[13]) if row[13] else None,
            created_at=_utc(row[10]) or datetime.now(UTC),
            charges=charges.get(row[0], []),
        )
        for row in items
    ]


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


__all__ = ["ConflictingIdempotencyKey", "InvalidItem", "RecurringItems", "item_views"]
