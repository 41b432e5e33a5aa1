"""The four projections: how events become rows, and how a batch of rows is written.

Each projection collects rows in memory while a batch of events is applied (``apply``), then
writes them with a few set-based statements (``flush``) inside the batch's transaction, next
to the update of its position. Rows are merged per key within a batch (an account's balance
is written once however many of its events the batch held; usage is summed per day and
product), which is what lets catch-up run at tens of thousands of events a second.

The table names a projection writes are passed to ``flush``: the live tables, or the shadow
tables a rebuild fills before it swaps them in.

The statement, whose rows are appended and never merged, may instead stream them: while its
``streaming`` context is open, each row goes into a COPY as soon as it is made, so the server
inserts them while the batch's later events are still being decoded (on two cores, the
server's work then hides behind ours rather than following it).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from typing import Any, ClassVar, Final, cast
from uuid import UUID

import msgspec
from psycopg import Copy, Cursor
from psycopg.sql import SQL, Identifier

from ledger_service.domain.account import BillingAccount
from ledger_service.domain.payloads import UsageLineRecord
from ledger_service.domain.times import parse_time
from ledger_service.projections.statement import StatementEntry, entry_seq, statement_entries

# Accounts kept in memory by the balances projection between batches. Past this, the least
# recently used are dropped and re-read from the event store (snapshot + events) when next
# touched.
ACCOUNTS_CACHED_MAX: Final = 200_000
_encode_json = msgspec.json.Encoder().encode

# (account_id, version) -> the account as of that version; None if it has no events.
LoadAccount = Callable[[UUID, int], BillingAccount | None]


class ProjectionError(RuntimeError):
    """The log cannot be projected as it stands (an event out of sequence, say)."""


class Projection(ABC):
    """One read model: rows collected from events, written in batches."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]

    @abstractmethod
    def apply(self, event: Any, position: int) -> None:
        """Collect what an account event (already decoded) changes."""

    @abstractmethod
    def flush(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        """Write the collected rows to the named tables (logical name -> table) and forget
        them."""

    @abstractmethod
    def reset(self) -> None:
        """Forget collected rows and cached state: the batch's transaction rolled back."""

    # A COPY holds its connection: at most one projection of a batch may stream.
    streams: ClassVar[bool] = False
    # Rows only ever appended (no upsert, no delete): a rebuild may fill its shadow without
    # any index, unique ones included (tables.py).
    appends_only: ClassVar[bool] = False

    def streaming(self, cur: Cursor[Any],
                  tables: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
        """While open, rows go to the named tables as they are made; ``cur`` is busy."""
        return contextlib.nullcontext()


# ------------------------------------------------------------------ balances


def credits_of(account: BillingAccount) -> list[dict[str, Any]]:
    return [{"grant_id": g.grant_id, "kind": g.kind, "granted_micros": g.granted_micros,
             "remaining_micros": g.remaining_micros, "expires_at": g.expires_at}
            for g in account.grants]


def balance_row(account: BillingAccount, position: int) -> tuple[Any, ...]:
    settings = account.settings
    return (
        account.id, account.id, settings.currency, settings.account_type, settings.closed,
        account.balance_micros, account.available_micros, account.held_micros,
        settings.credit_limit_micros, _encode_json(credits_of(account)).decode(),
        account.version, position, account.modified_on,
    )


BALANCE_COLUMNS: Final = (
    "account_id", "tenant_id", "currency", "account_type", "closed", "balance_micros",
    "available_micros", "held_micros", "credit_limit_micros", "credits", "version",
    "position", "updated_at")


class Balances(Projection):
    """Per account: balance, available, held, credit limit and the grants left."""

    name = "balances"
    tables = ("balances",)

    def __init__(self, load_account: LoadAccount,
                 accounts_cached_max: int = ACCOUNTS_CACHED_MAX) -> None:
        self.load_account = load_account
        self.accounts_cached_max = accounts_cached_max
        # Keyed by the account id's int: a UUID hashes and compares in Python, an int in C,
        # and every event looks its account up four times (a tenth of catch-up, measured).
        self._accounts: OrderedDict[int, BillingAccount] = OrderedDict()
        self._touched: dict[int, int] = {}

    def apply(self, event: Any, position: int) -> None:
        account_id: UUID = event.originator_id
        key = account_id.int
        account: BillingAccount
        if isinstance(event, BillingAccount.Opened):
            account = cast(BillingAccount, event.mutate(None))
        else:
            account = self._account_before(account_id, event.originator_version)
            event.mutate(account)
        self._accounts[key] = account
        self._accounts.move_to_end(key)
        self._touched[key] = position

    def _account_before(self, account_id: UUID, version: int) -> BillingAccount:
        account = self._accounts.get(account_id.int)
        # A cached account is behind when another process (or a rebuild's swap) applied
        # events this one did not see, and ahead after a rolled-back batch: reload it.
        if account is None or account.version != version - 1:
            account = self.load_account(account_id, version - 1)
            if account is None:
                raise ProjectionError(f"account {account_id} has no version {version - 1}")
        return account

    def flush(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        if not self._touched:
            return
        rows = [balance_row(self._accounts[a], p) for a, p in self._touched.items()]
        columns = list(zip(*rows, strict=True))
        table = Identifier(tables["balances"])
        updates = SQL(", ").join(
            SQL("{0} = EXCLUDED.{0}").format(Identifier(c)) for c in BALANCE_COLUMNS[1:])
        cur.execute(
            SQL("INSERT INTO {t} ({cols}) SELECT * FROM unnest("
                "%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::boolean[], %b::bigint[],"
                " %b::bigint[], %b::bigint[], %b::bigint[], %b::jsonb[], %b::bigint[],"
                " %b::bigint[], %b::timestamptz[])"
                " ON CONFLICT (account_id) DO UPDATE SET {updates}").format(
                t=table, cols=SQL(", ").join(map(Identifier, BALANCE_COLUMNS)),
                updates=updates),
            [list(c) for c in columns])
        self._touched.clear()
        while len(self._accounts) > self.accounts_cached_max:
            self._accounts.popitem(last=False)

    def reset(self) -> None:
        self._accounts.clear()
        self._touched.clear()


# ------------------------------------------------------------------ statement

STATEMENT_COLUMNS: Final = (
    "account_id", "entry_seq", "tenant_id", "entry_id", "kind", "amount_micros",
    "balance_after_micros", "currency", "description", "reference", "actor", "product",
    "quantity", "occurred_at", "version")
# Binary COPY: psycopg writes a row in half the time it takes to render it as text, and the
# server parses none of it (about a quarter less wall time per row together, measured); each
# value must then be of its column's type.
STATEMENT_TYPES: Final = (
    "uuid", "int8", "uuid", "uuid", "text", "int8", "int8", "text", "text", "text", "text",
    "text", "int8", "timestamptz", "int8")


def statement_row(account_id: UUID, version: int, position: int,
                  entry: StatementEntry) -> tuple[Any, ...]:
    return (account_id, entry_seq(position, entry.line), account_id, UUID(entry.entry_id),
            entry.kind, entry.amount_micros, entry.balance_after_micros, entry.currency,
            entry.description, entry.reference, entry.actor, entry.product, entry.quantity,
            datetime.fromisoformat(entry.occurred_at), version)


class Statement(Projection):
    """One row per entry, with the balance after it; appended, never updated."""

    name = "statement"
    tables = ("statement_entries",)
    streams = True
    appends_only = True

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []
        self._copy: Copy | None = None  # while streaming
        self._copy_refused: dict[str, bool] = {}  # by table: row-level security applies

    def apply(self, event: Any, position: int) -> None:
        for entry in statement_entries(event):
            row = statement_row(event.originator_id, event.originator_version, position, entry)
            if self._copy is not None:
                self._copy.write_row(row)
            else:
                self._rows.append(row)

    @contextlib.contextmanager
    def streaming(self, cur: Cursor[Any], tables: Mapping[str, str]) -> Iterator[None]:
        if self._refuses_copy(cur, tables):
            yield  # the rows gather, and `flush` inserts them
            return
        with self._copy_into(cur, tables) as copy:
            self._write(copy)
            self._copy = copy
            try:
                yield
            finally:
                self._copy = None

    def flush(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        if not self._rows:
            return
        if self._refuses_copy(cur, tables):
            self._insert(cur, tables)
            return
        with self._copy_into(cur, tables) as copy:
            self._write(copy)

    def _refuses_copy(self, cur: Cursor[Any], tables: Mapping[str, str]) -> bool:
        """PostgreSQL refuses COPY FROM into a table whose row-level security applies to the
        role: the runtime role's case (docs/operations.md), not the owner's. Asked once per
        table."""
        table = tables["statement_entries"]
        refused = self._copy_refused.get(table)
        if refused is None:
            row = cur.execute("SELECT row_security_active(%s::regclass)", (table,)).fetchone()
            refused = self._copy_refused[table] = bool(row and row[0])
        return refused

    def _insert(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        """The rows as one INSERT of arrays, column by column (what COPY does, where COPY is
        refused)."""
        columns = [list(values) for values in zip(*self._rows, strict=True)]
        cur.execute(SQL("INSERT INTO {t} ({cols}) SELECT * FROM unnest({arrays})").format(
            t=Identifier(tables["statement_entries"]),
            cols=SQL(", ").join(map(Identifier, STATEMENT_COLUMNS)),
            arrays=SQL(", ").join(SQL("%s::{}[]").format(SQL(kind))
                                  for kind in STATEMENT_TYPES)), columns)
        self._rows.clear()

    def _copy_into(self, cur: Cursor[Any],
                   tables: Mapping[str, str]) -> contextlib.AbstractContextManager[Copy]:
        statement = SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(
            t=Identifier(tables["statement_entries"]),
            cols=SQL(", ").join(map(Identifier, STATEMENT_COLUMNS)))
        return cur.copy(statement)

    def _write(self, copy: Copy) -> None:
        copy.set_types(STATEMENT_TYPES)
        for row in self._rows:
            copy.write_row(row)
        self._rows.clear()

    def reset(self) -> None:
        self._rows.clear()


# ------------------------------------------------------------------ usage


def usage_day(occurred_at: str) -> date:
    # Stored times are fixed-width UTC (domain/times.py): the date is the first ten characters.
    return date.fromisoformat(occurred_at[:10])


def usage_lines(event: Any) -> list[UsageLineRecord]:
    """The billed lines of a usage event (a released hold bills nothing)."""
    if not isinstance(event, BillingAccount.UsageRecorded):
        return []
    return [line for line in event.lines if line["hold_outcome"] != "released"]


class Usage(Projection):
    """Billed quantity and amount per account, UTC day and product."""

    name = "usage"
    tables = ("usage_daily",)

    def __init__(self) -> None:
        # (account id's int, day, product) -> [quantity, amount, lines]; the int for speed,
        # as in Balances, and the UUID back from it at flush
        self._sums: dict[tuple[int, date, str], list[int]] = {}

    def apply(self, event: Any, position: int) -> None:
        account_key = event.originator_id.int
        for line in usage_lines(event):
            key = (account_key, usage_day(line["occurred_at"]), line["product"])
            sums = self._sums.get(key)
            if sums is None:
                self._sums[key] = [line["quantity"], line["amount_micros"], 1]
            else:
                sums[0] += line["quantity"]
                sums[1] += line["amount_micros"]
                sums[2] += 1

    def flush(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        if not self._sums:
            return
        keys = list(self._sums)
        account_ids = [UUID(int=k[0]) for k in keys]
        cur.execute(
            SQL("INSERT INTO {t} AS u (account_id, day, product, tenant_id, quantity,"
                " amount_micros, lines) SELECT a, d, p, a, q, m, n FROM unnest(%b::uuid[],"
                " %b::date[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[])"
                " AS x(a, d, p, q, m, n)"
                " ON CONFLICT (account_id, day, product) DO UPDATE SET"
                " quantity = u.quantity + EXCLUDED.quantity,"
                " amount_micros = u.amount_micros + EXCLUDED.amount_micros,"
                " lines = u.lines + EXCLUDED.lines").format(t=Identifier(tables["usage_daily"])),
            (account_ids, [k[1] for k in keys], [k[2] for k in keys],
             [self._sums[k][0] for k in keys], [self._sums[k][1] for k in keys],
             [self._sums[k][2] for k in keys]))
        self._sums.clear()

    def reset(self) -> None:
        self._sums.clear()


# ------------------------------------------------------------------ open holds


def closed_hold_ids(event: Any) -> list[str]:
    """Holds an event captures, releases or expires."""
    if isinstance(event, BillingAccount.UsageRecorded):
        return [cast(str, line["hold_id"]) for line in event.lines
                if line["hold_outcome"] is not None]
    if isinstance(event, BillingAccount.HoldReleased):
        return [event.hold_id]
    if isinstance(event, BillingAccount.HoldsExpired):
        return [h["hold_id"] for h in event.holds]
    if isinstance(event, BillingAccount.Closed):
        return [h["hold_id"] for h in event.released_holds]
    return []


def hold_row(event: BillingAccount.HoldPlaced) -> tuple[Any, ...]:
    return (event.originator_id, event.hold_id, event.originator_id, event.product,
            event.quantity, event.amount_micros, parse_time(event.expires_at), event.timestamp)


class Holds(Projection):
    """Open holds: placed, and not captured, released or expired since."""

    name = "holds"
    tables = ("open_holds",)

    def __init__(self) -> None:
        # (account, hold) -> its row if open at the end of the batch, None if closed
        self._changes: dict[tuple[UUID, str], tuple[Any, ...] | None] = {}

    def apply(self, event: Any, position: int) -> None:
        if isinstance(event, BillingAccount.HoldPlaced):
            self._changes[(event.originator_id, event.hold_id)] = hold_row(event)
            return
        for hold_id in closed_hold_ids(event):
            self._changes[(event.originator_id, hold_id)] = None

    def flush(self, cur: Cursor[Any], tables: Mapping[str, str]) -> None:
        if not self._changes:
            return
        table = Identifier(tables["open_holds"])
        keys = list(self._changes)
        cur.execute(
            SQL("DELETE FROM {t} h USING unnest(%b::uuid[], %b::text[]) AS k(a, i)"
                " WHERE h.account_id = k.a AND h.hold_id = k.i").format(t=table),
            ([k[0] for k in keys], [k[1] for k in keys]))
        rows = [row for row in self._changes.values() if row is not None]
        if rows:
            columns = list(zip(*rows, strict=True))
            cur.execute(
                SQL("INSERT INTO {t} (account_id, hold_id, tenant_id, product, quantity,"
                    " amount_micros, expires_at, placed_at) SELECT * FROM unnest(%b::uuid[],"
                    " %b::text[], %b::uuid[], %b::text[], %b::bigint[], %b::bigint[],"
                    " %b::timestamptz[], %b::timestamptz[])").format(t=table),
                [list(c) for c in columns])
        self._changes.clear()

    def reset(self) -> None:
        self._changes.clear()


# ------------------------------------------------------------------ the set

PROJECTION_NAMES: Final = ("balances", "statement", "usage", "holds")


def make_projection(name: str, load_account: LoadAccount) -> Projection:
    if name == "balances":
        return Balances(load_account)
    if name == "statement":
        return Statement()
    if name == "usage":
        return Usage()
    if name == "holds":
        return Holds()
    raise ValueError(f"unknown projection {name!r}; one of {', '.join(PROJECTION_NAMES)}")

