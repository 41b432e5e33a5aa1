"""Portal reads of the projections: statement pages, CSV, usage, with their freshness.

Every read runs in one transaction that first switches to the role ``ledger_reader`` and sets
``ledger.tenant_id`` (both SET LOCAL, so they end with the transaction). Row-level security
then filters every tenant-scoped table by that tenant; with no tenant set it returns nothing.
The route's own check (404 for another tenant's account) is the first guard; this is the
second, so a query that forgets its ``WHERE account_id`` still cannot cross tenants.

The same first statement reads, as the owner, how fresh the projection is (its position and
the time it last committed, and the head of the log) and whether the account exists (its
currency, from its Opened event), so a read costs one extra round trip, not four.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, NamedTuple
from uuid import UUID

import msgspec
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.sql import SQL, Composed
from psycopg_pool import AsyncConnectionPool

from contracts.money import format_micros
from ledger_service.csv_cells import spreadsheet_row
from ledger_service.projections.decoding import ACCOUNT_TOPIC_PREFIX, LEGACY_ACCOUNT_TOPIC_PREFIX
from services.read_replica import REPLICA_ERRORS, ReadRouting

READER_ROLE: Final = "ledger_reader"
TENANT_SETTING: Final = "ledger.tenant_id"
OPENED_TOPICS: Final = [ACCOUNT_TOPIC_PREFIX + "Opened", LEGACY_ACCOUNT_TOPIC_PREFIX + "Opened"]
CSV_ROWS_FETCHED_PER_ROUND_TRIP: Final = 1_000
CSV_COLUMNS: Final = ("entry_id", "occurred_at", "kind", "amount", "currency", "balance_after",
                      "description", "reference")
_CURSOR_PREFIX: Final = "e1:"

_BEGIN: Final = SQL("BEGIN READ ONLY")
_COMMIT: Final = SQL("COMMIT")
# Parameters: account, Opened topic, role, tenant setting, tenant, projection (_setup_params).
# Bitmap scans are off for the read: the row-level security filter makes the planner expect
# one row, so it chose a bitmap scan and sorted a whole account's statement for each page
# (7 ms on a 1,000-entry account) instead of reading the primary key backwards (0.4 ms).
_SETUP = SQL(
    "SELECT p.position, p.updated_at,"
    " (SELECT coalesce(max(notification_id), 0) FROM ledger_events),"
    " (SELECT convert_from(state, 'UTF8')::json ->> 'currency' FROM ledger_events"
    "   WHERE originator_id = %s AND originator_version = 1 AND topic = ANY(%s)),"
    " set_config('role', %s, true), set_config(%s, %s, true),"
    " set_config('enable_bitmapscan', 'off', true)"
    " FROM (SELECT %s::text AS name) AS n"
    " LEFT JOIN projection_positions AS p ON p.name = n.name")


class BadCursor(ValueError):
    """A cursor this service did not issue."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current a projection read is: compare position with log_position."""

    position: int | None  # notification_id of the last event the projection applied
    updated_at: datetime | None  # when that batch committed
    log_position: int  # notification_id of the newest event in the log

    def headers(self) -> dict[str, str]:
        headers = {"X-Projection-Position": str(self.position or 0),
                   "X-Log-Position": str(self.log_position)}
        if self.updated_at is not None:
            headers["X-Projection-Updated-At"] = self.updated_at.isoformat()
        return headers


@dataclass(frozen=True, slots=True)
class TenantRead:
    conn: AsyncConnection[Any]
    freshness: Freshness
    currency: str | None  # None: the account does not exist


def _setup_params(projection: str, account_id: UUID, tenant_id: UUID) -> list[Any]:
    return [account_id, OPENED_TOPICS, READER_ROLE, TENANT_SETTING, str(tenant_id), projection]


def _setup_result(row: tuple[Any, ...] | None) -> tuple[Freshness, str | None]:
    assert row is not None
    position, updated_at, log_position, currency = row[:4]
    return Freshness(position, updated_at, int(log_position)), currency


@asynccontextmanager
async def tenant_read(pool: AsyncConnectionPool, projection: str, account_id: UUID,
                      tenant_id: UUID) -> AsyncIterator[TenantRead]:
    """A read-only transaction as ledger_reader, scoped to one tenant, for reads of many
    statements (a CSV through a server-side cursor)."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(_SETUP, _setup_params(projection, account_id, tenant_id))
        freshness, currency = _setup_result(await cur.fetchone())
        yield TenantRead(conn, freshness, currency)


@dataclass(frozen=True, slots=True)
class Answer:
    freshness: Freshness
    currency: str | None  # None: the account does not exist
    rows: list[tuple[Any, ...]]


async def tenant_query(pool: AsyncConnectionPool, projection: str, account_id: UUID,
                       tenant_id: UUID, query: Composed, params: list[Any]) -> Answer:
    """One query as ledger_reader for one tenant (see `scoped_read`)."""
    setup, rows = await scoped_read(pool, _SETUP, _setup_params(projection, account_id, tenant_id),
                                    query, params)
    freshness, currency = _setup_result(setup)
    return Answer(freshness, currency, rows)


async def scoped_read(pool: AsyncConnectionPool, setup: SQL, setup_params: list[Any],
                      query: SQL | Composed, params: list[Any],
                      ) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]:
    """BEGIN, ``setup`` (as the owner; it ends by switching to ledger_reader and setting the
    tenant, both transaction-local), ``query`` (under row-level security), COMMIT: one
    round trip.

    The four statements go as one query string, with the parameters bound client-side (by
    psycopg's quoting, so still no injection). Neither pipeline mode nor four round trips:
    psycopg's async pipeline waits for the socket to be writable as well as readable, which
    spins the event loop until the server answers (measured in the service: 0.8 ms of CPU a
    balance read, against 0.2 ms this way). On any failure the transaction is rolled back
    before the connection goes back to the pool.
    """
    statements = SQL("; ").join([_BEGIN, setup, query, _COMMIT])
    async with pool.connection() as conn:
        # The transaction is ours: without autocommit psycopg would first send a BEGIN of
        # its own and wait for it, a second round trip.
        autocommit = conn.autocommit
        await conn.set_autocommit(True)
        try:
            cur = AsyncClientCursor(conn)
            await cur.execute(statements, [*setup_params, *params])
            cur.nextset()
            first = await cur.fetchone()
            cur.nextset()
            return first, await cur.fetchall()
        except BaseException:
            with contextlib.suppress(Exception):  # the pool discards a broken connection
                await conn.rollback()
            raise
        finally:
            if conn.info.transaction_status == TransactionStatus.IDLE:
                await conn.set_autocommit(autocommit)


# ------------------------------------------------------------------ balance

# As the owner: the account's newest version in the log (None: no such aggregate), then the
# reader role and the tenant for the next statement. (max over the primary key is one index
# probe.)
_BALANCE_SETUP = SQL(
    "SELECT (SELECT max(originator_version) FROM ledger_events WHERE originator_id = %s),"
    " set_config('role', %s, true), set_config(%s, %s, true)")
_BALANCE = SQL(
    "SELECT currency, account_type, balance_micros, available_micros, held_micros,"
    " credit_limit_micros, credits::text, version, position, updated_at"
    " FROM balances WHERE account_id = %s")
_decode_credits = msgspec.json.Decoder(list[dict[str, Any]]).decode


@dataclass(frozen=True, slots=True)
class ProjectedBalance:
    """The balances projection's row for an account that has applied all its events."""

    currency: str
    account_type: str
    balance_micros: int
    available_micros: int
    held_micros: int
    credit_limit_micros: int
    credits: list[dict[str, Any]]
    version: int
    position: int  # of the account's last event in the log
    updated_at: datetime  # when that event happened

    def headers(self) -> dict[str, str]:
        # The row is exact (it has every event of the account), so no lag to report: which
        # version it is, where its last event sits in the log, and when that event happened.
        return {"X-Account-Version": str(self.version),
                "X-Projection-Position": str(self.position),
                "X-Account-Updated-At": self.updated_at.isoformat()}


async def current_balance(pool: AsyncConnectionPool, account_id: UUID,
                          tenant_id: UUID) -> tuple[int | None, ProjectedBalance | None]:
    """The account's newest version in the log, and its balances row if that row has applied
    every one of its events (None: the projection lags for this account, or it is not one).

    One pipelined round trip. The version check is what makes the row safe to answer with:
    a write committed before this read is in the log, so a row behind it is never returned,
    and the caller reads the account itself instead (read-your-writes).
    """
    setup, rows = await scoped_read(
        pool, _BALANCE_SETUP, [account_id, READER_ROLE, TENANT_SETTING, str(tenant_id)],
        _BALANCE, [account_id])
    head = setup[0] if setup else None
    row = rows[0] if rows else None
    if head is None or row is None or row[7] != head:
        return head, None
    return head, ProjectedBalance(row[0], row[1], row[2], row[3], row[4], row[5],
                                  _decode_credits(row[6]), row[7], row[8], row[9])


_HEAD = SQL("SELECT max(originator_version) FROM ledger_events WHERE originator_id = %s")


async def account_head(pool: AsyncConnectionPool, account_id: UUID) -> int | None:
    """The account's newest version in the log (one primary-key probe); None: no account."""
    async with pool.connection() as conn:
        cur = await conn.execute(_HEAD, [account_id])
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


@dataclass(frozen=True, slots=True)
class BalanceRead:
    head: int | None  # the account's newest version on the primary; None: no such account
    row: ProjectedBalance | None  # a row that has applied `head` (None: load the account)
    from_replica: bool  # the row came from the replica


async def fresh_balance(routing: ReadRouting, account_id: UUID, tenant_id: UUID) -> BalanceRead:
    """`current_balance`, from the replica when it can prove the row is fresh.

    A replica's row and its log can lag together, so the replica cannot vouch for itself:
    the account's newest version comes from the primary (a primary-key probe, sent alongside
    the replica's read), and the replica's row answers only when it has applied that version.
    Otherwise the primary answers as without a replica (its row, or the account loaded).
    """
    replica = await routing.replica_if_up()
    if replica is not None:
        try:
            head, (_, row) = await asyncio.gather(
                account_head(routing.primary, account_id),
                current_balance(replica, account_id, tenant_id))
        except REPLICA_ERRORS as exc:
            routing.replica_failed(exc)
        else:
            if head is None:
                return BalanceRead(None, None, False)
            if row is not None and row.version >= head:
                return BalanceRead(head, row, True)
    head, row = await current_balance(routing.primary, account_id, tenant_id)
    return BalanceRead(head, row, False)


# ------------------------------------------------------------------ statement


@dataclass(frozen=True, slots=True)
class EntryFilter:
    kinds: tuple[str, ...] = ()
    occurred_from: datetime | None = None  # inclusive
    occurred_to: datetime | None = None  # exclusive


class EntryRow(NamedTuple):
    """A statement row as read (a named tuple: a page builds a hundred of them)."""

    entry_seq: int
    entry_id: str  # the UUID's text, as PostgreSQL renders it
    kind: str
    amount_micros: int
    balance_after_micros: int
    description: str
    reference: str | None
    occurred_at: datetime
    currency: str | None


def encode_cursor(entry_seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{entry_seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(text)
        value = int(text.removeprefix(_CURSOR_PREFIX))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API returned") from None
    if value < 0:
        raise BadCursor("cursor is not one this API returned")
    return value


def _entries_query(account_id: UUID, where: EntryFilter, before_seq: int | None,
                   limit: int | None) -> tuple[Composed, list[Any]]:
    clauses = [SQL("account_id = %s")]
    params: list[Any] = [account_id]
    if where.kinds:
        clauses.append(SQL("kind = ANY(%s)"))
        params.append(list(where.kinds))
    if where.occurred_from is not None:
        clauses.append(SQL("occurred_at >= %s"))
        params.append(where.occurred_from)
    if where.occurred_to is not None:
        clauses.append(SQL("occurred_at < %s"))
        params.append(where.occurred_to)
    if before_seq is not None:
        clauses.append(SQL("entry_seq < %s"))
        params.append(before_seq)
    query = SQL("SELECT entry_seq, entry_id::text, kind, amount_micros, balance_after_micros,"
                " description, reference, occurred_at, currency FROM statement_entries"
                " WHERE {} ORDER BY entry_seq DESC").format(SQL(" AND ").join(clauses))
    if limit is not None:
        query += SQL(" LIMIT %s")
        params.append(limit)
    return query, params


@dataclass(frozen=True, slots=True)
class EntriesPage:
    freshness: Freshness
    currency: str | None  # None: the account does not exist
    entries: list[EntryRow]
    next_cursor: str | None


async def entries_page(pool: AsyncConnectionPool, account_id: UUID, tenant_id: UUID,
                       where: EntryFilter, cursor: str | None, limit: int) -> EntriesPage:
    """Newest first; ``limit`` entries and the cursor of the next page (None: last page).

    The keyset is entry_seq, which only grows: entries posted after the first page was read
    sort before it and never shift what a later page returns.
    """
    before = decode_cursor(cursor) if cursor else None
    query, params = _entries_query(account_id, where, before, limit + 1)
    answer = await tenant_query(pool, "statement", account_id, tenant_id, query, params)
    rows = [EntryRow(*row) for row in answer.rows]
    next_cursor = None
    if len(rows) > limit:
        rows, next_cursor = rows[:limit], encode_cursor(rows[limit - 1].entry_seq)
    return EntriesPage(answer.freshness, answer.currency, rows, next_cursor)


async def statement_csv(read: TenantRead, account_id: UUID,
                        where: EntryFilter) -> AsyncIterator[bytes]:
    """The whole filtered statement as CSV, newest first, read through a server-side cursor
    so that memory holds one round trip of rows whatever the statement's length."""
    query, params = _entries_query(account_id, where, None, None)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield _drain(buffer)
    async with read.conn.cursor(name="statement_csv") as cur:
        cur.itersize = CSV_ROWS_FETCHED_PER_ROUND_TRIP
        await cur.execute(query, params)
        while rows := await cur.fetchmany(CSV_ROWS_FETCHED_PER_ROUND_TRIP):
            for row in rows:
                entry = EntryRow(*row)
                writer.writerow(spreadsheet_row((
                    entry.entry_id, _utc_text(entry.occurred_at), entry.kind,
                    format_micros(entry.amount_micros), entry.currency or "",
                    format_micros(entry.balance_after_micros), entry.description,
                    entry.reference or "")))
            yield _drain(buffer)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data


# ------------------------------------------------------------------ usage


@dataclass(frozen=True, slots=True)
class UsageRow:
    period: str
    product: str
    quantity: int
    amount_micros: int


async def usage(pool: AsyncConnectionPool, account_id: UUID, tenant_id: UUID, group_by: str,
                day_from: date | None, day_to: date | None,
                limit: int) -> tuple[Answer, list[UsageRow]]:
    """Billed usage by day or month and product, oldest first; days from inclusive, to
    exclusive (UTC)."""
    clauses = [SQL("account_id = %s")]
    params: list[Any] = [account_id]
    if day_from is not None:
        clauses.append(SQL("day >= %s"))
        params.append(day_from)
    if day_to is not None:
        clauses.append(SQL("day < %s"))
        params.append(day_to)
    where = SQL(" AND ").join(clauses)
    if group_by == "month":
        query = SQL("SELECT to_char(date_trunc('month', day), 'YYYY-MM'), product,"
                    " sum(quantity)::bigint, sum(amount_micros)::bigint FROM usage_daily"
                    " WHERE {} GROUP BY 1, 2 ORDER BY 1, 2 LIMIT %s").format(where)
    else:
        query = SQL("SELECT to_char(day, 'YYYY-MM-DD'), product, quantity, amount_micros"
                    " FROM usage_daily WHERE {} ORDER BY day, product LIMIT %s").format(where)
    answer = await tenant_query(pool, "usage", account_id, tenant_id, query, [*params, limit])
    return answer, [UsageRow(*row) for row in answer.rows]


# ------------------------------------------------------------------ audit (operators)


async def account_event_rows(pool: AsyncConnectionPool, account_id: UUID, from_version: int,
                             limit: int) -> Sequence[tuple[Any, ...]]:
    """Stored events of an account from a version on, as the owner (operators only)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM ledger_events WHERE originator_id = %s AND originator_version >= %s"
            " ORDER BY originator_version LIMIT %s", (account_id, from_version, limit))
        return await cur.fetchall()
