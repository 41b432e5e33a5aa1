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
    ChangeRecurringItem,
    ChangeRecurringPlan,
    CreateRecurringItem,
    PendingPlanChange,
    PlanChangeView,
    RecurringChargeView,
    RecurringItemsPage,
    RecurringItemView,
)
from contracts.money import format_micros, to_micros
from invoicing_service.recurring.app import announce
from invoicing_service.recurring.app.ledger import (
    Charged,
    Credited,
    FeeRequest,
    Refused,
    Rejected,
)
from invoicing_service.recurring.app.renewals import Item, Renewals, items_sql
from invoicing_service.recurring.domain import (
    InsufficientFunds,
    InvalidItem,
    ItemCancelled,
    ItemNotChangeable,
    ItemNotFound,
    LedgerRefusal,
    LedgerUnavailable,
    RecurringError,
    RecurringProduct,
    ReferenceInUse,
    Segment,
    cancellation_end,
    check_item,
    immediate_change,
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
            response = await _answer_kept(conn, item_id, scope, key, body_hash)
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
        async with self.pool.connection() as conn, conn.transaction():
            item = await _lock(conn, item_id)
            await self._change_next_period(conn, item, body.product, body.quantity, actor, now)
            (view,) = await item_views(conn, "i.item_id = %s", (item_id,))
        return view

    async def change(self, item_id: UUID, body: ChangeRecurringItem, key: str, body_hash: str,
                     actor: str) -> tuple[bytes, bool]:
        """A plan change from the next period or at once with proration (`effective`, else
        the product's setting), once per Idempotency-Key: (response, replayed).

        At once: the current month's charge is made first if it is due; the new plan is
        charged for today to the month's end (its own charge key), then the unused days of
        the plan left are credited back (an adjustment with its own key), both through the
        ledger while the item is locked, then recorded. A retry with the same key after a
        crash or an unreachable ledger gets the ledger's first answers: charged once."""
        scope = f"change:{item_id}"
        stored = await self._stored(scope, key, body_hash)
        if stored is not None:
            return stored, True
        now = self.renewals.clock()
        async with self.pool.connection() as conn, conn.transaction():
            item = await _lock(conn, item_id)
            products = await self.renewals.products(conn)
            current = products.get(item.product)
            effective = body.effective or (current.plan_change if current else "next_period")
            if effective == "next_period":
                await self._change_next_period(conn, item, body.product, body.quantity, actor,
                                               now)
            else:
                await self._change_now(conn, item, body, key, actor, now)
            response = await _answer_kept(conn, item_id, scope, key, body_hash)
        self.renewals.committed()
        return response, False

    async def _new_plan(self, conn: Conn, item: Item, product_key: str | None,
                        quantity: int | None) -> tuple[RecurringProduct, int]:
        """The plan asked for, checked: a known product, a quantity in range, a change at
        all, and no other live item of the new product with this reference."""
        if product_key is None and quantity is None:
            raise InvalidItem("a plan change names a product, a quantity or both")
        products = await self.renewals.products(conn)
        product_key = product_key if product_key is not None else item.product
        quantity = quantity if quantity is not None else item.quantity
        product = check_item(products.get(product_key), product_key, quantity,
                             item.starts_on, item.ends_on)
        if product_key == item.product and quantity == item.quantity:
            raise InvalidItem(f"the item is already on {product_key} x {quantity}")
        if product_key != item.product:
            cursor = await conn.execute(
                "SELECT 1 FROM recurring_items WHERE product = %s AND reference = %s"
                " AND status <> 'cancelled' AND item_id <> %s",
                (product_key, item.reference, item.item_id))
            if await cursor.fetchone() is not None:
                raise ReferenceInUse(f"{product_key} {item.reference!r} is on a live item")
        return product, quantity

    async def _change_next_period(self, conn: Conn, item: Item, product_key: str | None,
                                  quantity: int | None, actor: str, now: datetime) -> None:
        from_period = next_period(period_of(now.date()))
        if item.status == "cancelled" or (item.ends_on is not None
                                          and period_of(item.ends_on) < from_period):
            raise ItemCancelled(f"recurring item {item.item_id} ends before {from_period}")
        product, new_quantity = await self._new_plan(conn, item, product_key, quantity)
        await conn.execute(
            "UPDATE recurring_items SET pending_product = %s, pending_quantity = %s,"
            " pending_from = %s, updated_at = %s WHERE item_id = %s",
            (product.key, new_quantity, from_period, now, item.item_id))
        await announce.record(conn, item.item_id, item.account_id, "plan_change_requested",
                              now, product=product.key, quantity=new_quantity,
                              from_period=from_period, actor=actor)

    async def _change_now(self, conn: Conn, item: Item, body: ChangeRecurringItem, key: str,
                          actor: str, now: datetime) -> None:
        today = now.date()
        if item.status == "cancelled" or (item.ends_on is not None and item.ends_on < today):
            raise ItemCancelled(f"recurring item {item.item_id} has ended")
        if item.status in ("past_due", "suspended"):
            raise ItemNotChangeable(f"recurring item {item.item_id} is {item.status}: pay what"
                                    " it owes first")
        product, quantity = await self._new_plan(conn, item, body.product, body.quantity)
        if item.starts_on > today:  # nothing charged yet: it simply starts on the new plan
            await self._apply_plan(conn, item, product.key, quantity, now)
            await announce.record(conn, item.item_id, item.account_id, "plan_changed", now,
                                  product=product.key, quantity=quantity, effective="now",
                                  actor=actor)
            return
        item = await self._charged_through_today(conn, item, today, now)
        segment, segment_entry, line_reference = await self._segment(conn, item, today)
        change = immediate_change(segment, product, quantity, today, item.ends_on)
        period = period_of(today)
        change_id = uuid5(ITEM_NAMESPACE, f"change:{item.item_id}:{key}")
        charge_key = f"recurring:{item.item_id}:{period}:change:{change_id}"
        (outcome,) = await self.renewals.ledger.charge_many([FeeRequest(
            account_id=item.account_id, charge_key=charge_key, product=product.key,
            quantity=quantity, reference=item.reference, period=period,
            days=change.charge.days, days_in_period=change.charge.days_in_period,
            description=f"{product.key} {item.reference}: plan change from {today.isoformat()}",
        )])
        fee = _charged(outcome)
        credit_entry: str | None = None
        if change.credit_micros:
            used = f"{change.used.days if change.used and change.used.days else 0}"
            memo = (f"Plan change of {segment.product.key} {item.reference} on"
                    f" {today.isoformat()}: unused part of {period} credited"
                    f" ({used} days used; item {item.item_id})")
            credited = await self.renewals.ledger.credit(
                item.account_id, f"recurring:{item.item_id}:{period}:credit:{change_id}",
                format_micros(change.credit_micros), memo)
            if not isinstance(credited, Credited):
                raise (LedgerUnavailable if not isinstance(credited, Rejected)
                       else LedgerRefusal)(f"the ledger did not credit: {credited}")
            credit_entry = credited.entry.entry_id
        await conn.execute(
            "INSERT INTO recurring_plan_changes (change_id, item_id, account_id, period,"
            " effective_on, from_product, from_quantity, to_product, to_quantity,"
            " credit_micros, credit_entry_id, entry_id, amount, unit_price, currency, days,"
            " days_in_period, actor, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)",
            (change_id, item.item_id, item.account_id, period, today, segment.product.key,
             segment.quantity, product.key, quantity, change.credit_micros, credit_entry,
             fee.entry_id, fee.amount, fee.unit_price, fee.currency, change.charge.days,
             change.charge.days_in_period, actor, now))
        await self._invoice_lines(conn, item, segment, segment_entry, line_reference,
                                  change.credit_micros, credit_entry, fee, today)
        await self._apply_plan(conn, item, product.key, quantity, now)
        await announce.record(conn, item.item_id, item.account_id, "plan_changed", now,
                              product=product.key, quantity=quantity, effective="now",
                              credit=format_micros(change.credit_micros),
                              credit_entry_id=credit_entry, entry_id=fee.entry_id,
                              amount=fee.amount, actor=actor)

    async def _charged_through_today(self, conn: Conn, item: Item, today: date,
                                     now: datetime) -> Item:
        """The month must be paid before its unused part can be credited: plan and charge
        what is due (as a renewal run would), then insist the month's charge went through."""
        await self.renewals.plan_items(conn, [item], today)
        await conn.execute("UPDATE recurring_items SET planned_through = %s"
                           " WHERE item_id = %s", (period_of(today), item.item_id))
        item = await _lock(conn, item.item_id)  # a pending next-period change may have applied
        await self.renewals.collect(conn, [item], ("pending",), today, now)
        cursor = await conn.execute(
            "SELECT status FROM recurring_charges WHERE item_id = %s AND period = %s",
            (item.item_id, period_of(today)))
        row = await cursor.fetchone()
        if row is None or row[0] != "charged":
            raise ItemNotChangeable(
                f"this month's charge of item {item.item_id} is"
                f" {row[0] if row else 'not planned'}: it changes once the month is paid")
        return await _lock(conn, item.item_id)

    async def _segment(self, conn: Conn, item: Item, today: date
                       ) -> tuple[Segment, str, str]:
        """What the item was last charged for this month, the ledger entry of that charge
        and the reference its invoice line carries."""
        products = await self.renewals.products(conn)
        period = period_of(today)
        cursor = await conn.execute(
            "SELECT to_product, to_quantity, unit_price, amount, effective_on, entry_id"
            " FROM recurring_plan_changes WHERE item_id = %s AND period = %s"
            " ORDER BY created_at DESC, change_id LIMIT 1", (item.item_id, period))
        row = await cursor.fetchone()
        if row is not None:
            return (Segment(products[row[0]], row[1], to_micros(row[2]), to_micros(row[3]),
                            row[4]), row[5], change_line_reference(item.reference, row[4]))
        cursor = await conn.execute(
            "SELECT product, quantity, unit_price, amount, days, due_on, entry_id"
            " FROM recurring_charges WHERE item_id = %s AND period = %s",
            (item.item_id, period))
        product_key, quantity, unit_price, amount, days, due_on, entry_id = \
            await cursor.fetchone()  # type: ignore[misc]  # _charged_through_today saw it
        if unit_price is None:  # charged before unit prices were kept: whole months only
            if days is not None or to_micros(amount) % quantity:
                raise ItemNotChangeable("this month was charged before unit prices were kept:"
                                        " change it from next month")
            unit_price = format_micros(to_micros(amount) // quantity)
        return (Segment(products[product_key], quantity, to_micros(unit_price),
                        to_micros(amount), due_on), entry_id, item.reference)

    async def _invoice_lines(self, conn: Conn, item: Item, segment: Segment,
                             segment_entry: str, line_reference: str, credit_micros: int,
                             credit_entry: str | None, fee: Any, today: date) -> None:
        """The month's invoice of a postpay account (usage_lines, as the billing run reads
        them): the credit nets into the line of the plan it credits (invoice lines bill
        non-negative amounts: quantity 0, a negative amount, the same product, price,
        period and reference), and the new plan's charge is its own line "<reference> from
        <day>". A credit whose plan line was invoiced already is left to the ledger."""
        period = period_of(today)
        if credit_entry is not None:
            await conn.execute(
                "INSERT INTO usage_lines (entry_id, account_id, currency, product, quantity,"
                " unit_price_micros, amount_micros, occurred_at, period, kind, reference)"
                " SELECT %s, %s, %s, %s, 0, %s, %s, %s, %s, 'fee', %s"
                " WHERE NOT EXISTS (SELECT 1 FROM usage_lines WHERE entry_id = %s"
                "  AND invoiced_on IS NOT NULL)"
                " ON CONFLICT (entry_id) DO NOTHING",
                (credit_entry, item.account_id, fee.currency, segment.product.key,
                 segment.unit_price_micros, -credit_micros, fee.occurred_at, period,
                 line_reference, segment_entry))
        # The ledger's entry_posted brings the same entry (the same id): whichever comes
        # first, the line ends up named as the change's.
        await conn.execute(
            "INSERT INTO usage_lines (entry_id, account_id, currency, product, quantity,"
            " unit_price_micros, amount_micros, occurred_at, period, kind, reference)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'fee', %s)"
            " ON CONFLICT (entry_id) DO UPDATE SET reference = EXCLUDED.reference"
            " WHERE usage_lines.invoiced_on IS NULL",
            (fee.entry_id, item.account_id, fee.currency, fee.product, fee.quantity,
             to_micros(fee.unit_price), to_micros(fee.amount), fee.occurred_at, period,
             change_line_reference(item.reference, today)))

    async def _apply_plan(self, conn: Conn, item: Item, product: str, quantity: int,
                          now: datetime) -> None:
        await conn.execute(
            "UPDATE recurring_items SET product = %s, quantity = %s, pending_product = NULL,"
            " pending_quantity = NULL, pending_from = NULL, updated_at = %s WHERE item_id = %s",
            (product, quantity, now, item.item_id))

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


def change_line_reference(reference: str, effective_on: date) -> str:
    """The invoice line of a plan taken mid-month names its first day."""
    return f"{reference} from {effective_on.isoformat()}"


def _charged(outcome: Any) -> Any:
    """The new plan's fee, or the refusal as the route's error (nothing recorded here)."""
    if isinstance(outcome, Charged):
        return outcome.fee
    if isinstance(outcome, Refused):
        raise InsufficientFunds(f"the ledger refused the new plan's charge: {outcome.detail}")
    if isinstance(outcome, Rejected):
        raise LedgerRefusal(f"the ledger refused the new plan's charge ({outcome.status}):"
                            f" {outcome.detail}")
    raise LedgerUnavailable(f"the ledger could not be reached: {outcome.detail};"
                            " retry with the same Idempotency-Key")


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
    cursor = await conn.execute(
        "SELECT item_id, change_id, period, effective_on, from_product, from_quantity,"
        " to_product, to_quantity, credit_micros, credit_entry_id, amount, entry_id,"
        " unit_price, currency, days, days_in_period, created_at FROM recurring_plan_changes"
        " WHERE item_id = ANY(%s) ORDER BY item_id, created_at, change_id",
        ([row[0] for row in items],))
    changes: dict[UUID, list[PlanChangeView]] = {}
    for row in await cursor.fetchall():
        changes.setdefault(row[0], []).append(PlanChangeView(
            change_id=str(row[1]), period=row[2], effective_on=row[3], from_product=row[4],
            from_quantity=row[5], to_product=row[6], to_quantity=row[7],
            credit=format_micros(row[8]), credit_entry_id=row[9], amount=row[10],
            entry_id=row[11], unit_price=row[12], currency=row[13], days=row[14],
            days_in_period=row[15], changed_at=_utc(row[16]) or datetime.now(UTC)))
    return [
        RecurringItemView(
            item_id=str(row[0]), account_id=row[1], product=row[2], quantity=row[3],
            reference=row[4], starts_on=row[5], ends_on=row[6], status=row[7],
            past_due_since=_utc(row[8]), suspended_at=_utc(row[9]),
            pending_change=PendingPlanChange(product=row[11], quantity=row[12],
                                             from_period=row[13]) if row[13] else None,
            created_at=_utc(row[10]) or datetime.now(UTC),
            charges=charges.get(row[0], []),
            plan_changes=changes.get(row[0], []),
        )
        for row in items
    ]


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


__all__ = ["ConflictingIdempotencyKey", "InvalidItem", "RecurringItems", "item_views"]


async def _answer_kept(conn: Conn, item_id: UUID, scope: str, key: str, body_hash: str
                       ) -> bytes:
    """The item's view as the request's answer, kept under its Idempotency-Key in the same
    transaction (a replay gets these bytes)."""
    (view,) = await item_views(conn, "i.item_id = %s", (item_id,))
    response = _encoder.encode(view)
    await conn.execute(
        "INSERT INTO recurring_requests (scope, key, request_hash, response)"
        " VALUES (%s, %s, %s, %s)", (scope, key, body_hash, response))
    return response
