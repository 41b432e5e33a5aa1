"""Reading payment records: newest first, keyset-paged, scoped to what the caller may see."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import msgspec
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from payments_service.app.records import PAYMENT_COLUMNS, PaymentRow
from payments_service.domain.errors import InvalidCursor
from services.read_replica import ReadRoute, ReadRouting

PAGE_SIZE_DEFAULT: Final = 50


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    account_id: UUID | None = None
    status: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive


class _Cursor(msgspec.Struct, array_like=True, frozen=True):
    created_at: datetime
    payment_id: str


def encode_cursor(row: PaymentRow) -> str:
    raw = msgspec.json.encode(_Cursor(created_at=row.created_at, payment_id=row.payment_id))
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("cursor is not one this service issued") from None


class PaymentRecords:
    def __init__(self, pool: AsyncConnectionPool, routing: ReadRouting | None = None) -> None:
        self._pool = pool
        self._routing = routing or ReadRouting(pool)

    async def page(
        self, where: PaymentFilter, *, limit: int, cursor: str | None
    ) -> tuple[tuple[list[PaymentRow], str | None], ReadRoute]:
        """The listing, from the read replica while its lag is within
        DATABASE_READ_LAG_MAX_S (as of its position), else from the primary
        (services/read_replica.py)."""
        return await self._routing.run(
            lambda route: self._page(route.pool, where, limit=limit, cursor=cursor))

    async def _page(
        self, pool: AsyncConnectionPool, where: PaymentFilter, *, limit: int, cursor: str | None
    ) -> tuple[list[PaymentRow], str | None]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("account_id = %s", where.account_id),
            ("status = %s", where.status),
            ("created_at >= %s", where.created_from),
            ("created_at < %s", where.created_to),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if cursor is not None:
            after = decode_cursor(cursor)
            clauses.append("(created_at, payment_id) < (%s, %s)")
            params += [after.created_at, after.payment_id]
        sql = (f"SELECT {PAYMENT_COLUMNS} FROM payments"  # noqa: S608 (constant column lists; values are parameters)
               + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
               + " ORDER BY created_at DESC, payment_id DESC LIMIT %s")
        # One row more than asked says whether there is a next page without a count.
        params.append(limit + 1)
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            rows = [PaymentRow(**row) for row in await cur.fetchall()]
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
        return page, next_cursor

    async def one(self, payment_id: str) -> PaymentRow | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = %s", (payment_id,)  # noqa: S608 (constant column lists; values are parameters)
            )
            row = await cur.fetchone()
        return PaymentRow(**row) if row else None
