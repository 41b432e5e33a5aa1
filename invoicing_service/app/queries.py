"""Reads of invoices for the portal and operators, from the read model the issue transaction
keeps (store.py). A portal read runs under row-level security for its tenant (as the
ledger's): the route's own 404 is the first guard, the policy the second."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import msgspec
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import (
    CreditNoteView,
    InvoicesPage,
    InvoiceSummary,
    InvoiceView,
    StatusTotal,
)
from contracts.money import format_micros
from invoicing_service.app.customers import tenant_scope
from invoicing_service.domain import errors
from services.read_replica import ReadRoute, ReadRouting

PAGE_SIZE_DEFAULT: Final = 50
_view_decoder = msgspec.json.Decoder(InvoiceView)
_note_decoder = msgspec.json.Decoder(CreditNoteView)


@dataclass(frozen=True, slots=True)
class InvoiceFilter:
    account_id: UUID | None = None
    status: str | None = None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"i:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, seq = text.partition(":")
        if kind != "i":
            raise ValueError(kind)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise errors.BadCursor("cursor is not one this API returned") from None


class InvoiceQueries:
    def __init__(self, pool: AsyncConnectionPool, routing: ReadRouting | None = None) -> None:
        self.pool = pool
        self.routing = routing or ReadRouting(pool)

    async def page(self, where: InvoiceFilter, *, tenant_id: UUID | None, limit: int,
                   cursor: str | None) -> tuple[InvoicesPage, ReadRoute]:
        """The listing, from the read replica while its lag is within
        DATABASE_READ_LAG_MAX_S (as of its position: the route says how far behind it may
        be), else from the primary (services/read_replica.py)."""
        return await self.routing.run(lambda route: self._page(
            route.pool, where, tenant_id=tenant_id, limit=limit, cursor=cursor))

    async def _page(self, pool: AsyncConnectionPool, where: InvoiceFilter, *,
                    tenant_id: UUID | None, limit: int, cursor: str | None) -> InvoicesPage:
        conditions: list[sql.Composable] = [sql.SQL("status <> 'draft'")]
        params: list[Any] = []
        if where.account_id is not None:
            conditions.append(sql.SQL("account_id = %s"))
            params.append(where.account_id)
        if where.status is not None:
            conditions.append(sql.SQL("status = %s"))
            params.append(where.status)
        matching = sql.SQL(" AND ").join(conditions)
        paged = matching
        page_params = list(params)
        if cursor is not None:
            paged = sql.SQL(" AND ").join([matching, sql.SQL("seq < %s")])
            page_params.append(decode_cursor(cursor))
        async with tenant_scope(pool, tenant_id) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.SQL(
                "SELECT seq, view FROM invoices WHERE {} ORDER BY seq DESC LIMIT %s"
            ).format(paged), [*page_params, limit + 1])
            rows = await cur.fetchall()
            await cur.execute(sql.SQL(
                "SELECT status, currency, count(*) AS count, sum(total_micros) AS total,"
                " sum(amount_due_micros) AS due FROM invoices WHERE {}"
                " GROUP BY status, currency ORDER BY status, currency").format(matching), params)
            totals = await cur.fetchall()
        items = [summary(_view_decoder.decode(row["view"])) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return InvoicesPage(
            items=items,
            totals=[StatusTotal(status=t["status"], currency=t["currency"], count=int(t["count"]),
                                total=format_micros(int(t["total"])),
                                amount_due=format_micros(int(t["due"]))) for t in totals],
            next_cursor=next_cursor,
        )

    async def invoice(self, invoice_id: UUID, *, tenant_id: UUID | None) -> InvoiceView:
        async with tenant_scope(self.pool, tenant_id) as conn:
            cur = await conn.execute("SELECT view FROM invoices WHERE invoice_id = %s",
                                     (invoice_id,))
            row = await cur.fetchone()
        if row is None:
            raise errors.InvoiceNotFound(f"invoice {invoice_id} not found")
        return _view_decoder.decode(row[0])

    async def credit_notes(self, invoice_id: UUID, *, tenant_id: UUID | None) -> list[CreditNoteView]:
        async with tenant_scope(self.pool, tenant_id) as conn:
            cur = await conn.execute("SELECT view FROM credit_notes WHERE invoice_id = %s"
                                     " ORDER BY number", (invoice_id,))
            rows = await cur.fetchall()
        return [_note_decoder.decode(row[0]) for row in rows]

    async def credit_note(self, credit_note_id: UUID, *, tenant_id: UUID | None) -> CreditNoteView:
        async with tenant_scope(self.pool, tenant_id) as conn:
            cur = await conn.execute("SELECT view FROM credit_notes WHERE credit_note_id = %s",
                                     (credit_note_id,))
            row = await cur.fetchone()
        if row is None:
            raise errors.InvoiceNotFound(f"credit note {credit_note_id} not found")
        return _note_decoder.decode(row[0])

    async def overdue_candidates(self, now: datetime, limit: int) -> list[UUID]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT invoice_id FROM invoices WHERE status = 'open' AND due_at < %s"
                " AND amount_due_micros > 0 ORDER BY due_at LIMIT %s", (now, limit))
            return [row[0] for row in await cur.fetchall()]


def summary(view: InvoiceView) -> InvoiceSummary:
    return InvoiceSummary(
        invoice_id=view.invoice_id, number=view.number, account_id=view.account_id,
        status=view.status, currency=view.currency, period=view.period, total=view.total,
        amount_due=view.amount_due, issued_at=view.issued_at, due_at=view.due_at)
