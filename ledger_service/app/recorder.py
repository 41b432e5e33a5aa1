"""The event store's recorder, extended so the ledger's side tables commit with the events.

eventsourcing hands ``Application.save(..., ledger_rows=...)`` keyword arguments through to the
recorder's ``insert_events``, which this recorder replaces. It writes the events and the
idempotency keys, the entry index and the expiry schedule in the same transaction: a key is
recorded if and only if its effect is, which is what makes "exactly once" true across
crashes and across two intake processes (the second one's insert of the same key fails, its
whole transaction rolls back, and it retries to find the key already there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import ClientCursor, Connection, Cursor
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal


@dataclass(slots=True)
class IdempotencyRow:
    scope: str
    key: str
    account_id: UUID | None
    request_hash: str | None = None
    response: bytes | None = None


@dataclass(slots=True)
class EntryRow:
    entry_id: str  # a UUID's text: PostgreSQL parses it, no UUID object per usage line
    account_id: UUID
    originator_version: int
    kind: str


@dataclass(slots=True)
class LedgerRows:
    """Side-table rows to commit with one save."""

    keys: list[IdempotencyRow] = field(default_factory=list)
    entries: list[EntryRow] = field(default_factory=list)
    schedule: list[tuple[UUID, datetime]] = field(default_factory=list)
    unschedule: list[tuple[UUID, datetime]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.keys or self.entries or self.schedule or self.unschedule)


# Saves this small go as one query string (`_insert_in_one_round_trip`); bigger ones by COPY.
ONE_ROUND_TRIP_ROWS_MAX = 200


# The expiry schedule's rows, written the same way by both save paths.
_UNSCHEDULE: Final = SQL(
    "DELETE FROM {}.expiry_schedule s USING unnest(%s::uuid[], %s::timestamptz[])"
    " AS d(account_id, due_at) WHERE s.account_id = d.account_id AND s.due_at <= d.due_at")
_SCHEDULE: Final = SQL(
    "INSERT INTO {}.expiry_schedule (account_id, due_at)"
    " SELECT * FROM unnest(%s::uuid[], %s::timestamptz[]) ON CONFLICT DO NOTHING")


def _columns(pairs: Sequence[tuple[UUID, datetime]]) -> tuple[list[UUID], list[datetime]]:
    return [a for a, _ in pairs], [d for _, d in pairs]


def _row_count(rows: LedgerRows | None) -> int:
    if not rows:
        return 0
    return len(rows.keys) + len(rows.entries) + len(rows.schedule) + len(rows.unschedule)


def _values(count: int, row: str) -> Composed:
    return SQL(", ").join([SQL(row)] * count)


# What a one-round-trip save's statements depend on: the number of keys, entries and events,
# and whether there are schedule rows to delete or add. The query text is built once per
# shape (psycopg's SQL composition was a fifth of an authorization's CPU) and cached.
Shape = tuple[int, int, bool, bool, int]
SHAPES_CACHED_MAX = 512


def _shape(stored_events: Sequence[StoredEvent], rows: LedgerRows | None) -> Shape:
    if not rows:
        return (0, 0, False, False, len(stored_events))
    return (len(rows.keys), len(rows.entries), bool(rows.unschedule), bool(rows.schedule),
            len(stored_events))


def _rows_sql(schema: Identifier, shape: Shape) -> list[Composable]:
    """The side rows as plain statements (the one-round-trip save)."""
    keys, entries, unschedule, schedule, _ = shape
    parts: list[Composable] = []
    if keys:
        parts.append(SQL("INSERT INTO {}.idempotency_keys (scope, key, account_id, request_hash,"
                         " response) VALUES {}").format(schema, _values(keys, "(%s, %s, %s, %s, %s)")))
    if entries:
        parts.append(SQL("INSERT INTO {}.entry_index (entry_id, account_id, originator_version,"
                         " kind) VALUES {}").format(schema, _values(entries, "(%s, %s, %s, %s)")))
    if unschedule:
        parts.append(_UNSCHEDULE.format(schema))
    if schedule:
        parts.append(_SCHEDULE.format(schema))
    return parts


def _rows_params(rows: LedgerRows) -> list[Any]:
    """The parameters of `_rows_sql`, in its order."""
    params: list[Any] = []
    for key in rows.keys:
        params += (key.scope, key.key, key.account_id, key.request_hash, key.response)
    for entry in rows.entries:
        params += (entry.entry_id, entry.account_id, entry.originator_version, entry.kind)
    if rows.unschedule:
        params += _columns(rows.unschedule)
    if rows.schedule:
        params += _columns(rows.schedule)
    return params


# The stored events refuse change (tamper evidence, docs/design.md): a trigger rejects UPDATE,
# DELETE and TRUNCATE, so editing history takes a deliberate act of a superuser or the table's
# owner (disabling the trigger, or session_replication_role = replica), which the keyed chain
# and the signed anchors then expose. Snapshots are left alone: they are a cache that `verify`
# checks against the replay.
_PROTECT_HISTORY: Final = (
    "CREATE OR REPLACE FUNCTION {schema}.refuse_history_change() RETURNS trigger"
    " LANGUAGE plpgsql AS $fn$ BEGIN RAISE EXCEPTION"
    " 'the ledger''s event log is append-only: % on % refused', TG_OP, TG_TABLE_NAME"
    " USING ERRCODE = 'insufficient_privilege',"
    " HINT = 'history is corrected by new events (docs/design.md, tamper evidence)'; END $fn$",
    "CREATE OR REPLACE TRIGGER {append_only} BEFORE UPDATE OR DELETE ON {schema}.{table}"
    " FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_history_change()",
    "CREATE OR REPLACE TRIGGER {never_truncated} BEFORE TRUNCATE ON {schema}.{table}"
    " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_history_change()",
)


class LedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queries: dict[Shape, str] = {}  # one-round-trip saves' text, by shape
        # Writers take turns under a transaction-level advisory lock instead of the library's
        # LOCK TABLE ... IN EXCLUSIVE MODE, which PostgreSQL grants only to a role that may
        # UPDATE, DELETE or TRUNCATE the table: the runtime role holds none of those on the
        # log (docs/operations.md, least privilege). Every insert into the log comes through
        # this recorder, so taking turns here still keeps the notification ids committing in
        # order, and ours the contiguous run ending at currval.
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(self.datastore.lock_timeout),
            SQL("SELECT pg_advisory_xact_lock(hashtext({0}))").format(
                Literal(f"{self.datastore.schema}.{self.events_table_name}:insert")),
        ]
        # The library's own extension point: statements its create_table() runs.
        for text in _PROTECT_HISTORY:
            self.sql_create_statements.append(SQL(text).format(
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
                append_only=Identifier(f"{self.events_table_name}_append_only"),
                never_truncated=Identifier(f"{self.events_table_name}_never_truncated"),
            ))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and side rows in one transaction under the table lock: a small save
        as one query string (`_insert_in_one_round_trip`), a bigger one with COPY.

        The stock recorder binds an array of composite values, whose dumping in Python took a
        third of an intake batch; COPY streams the same rows several times faster. Under the
        EXCLUSIVE lock no other transaction draws from the notification sequence, so the ids
        of our rows are the contiguous run that ends at currval. A duplicate key (a stale
        aggregate version, an idempotency key already used) fails the COPY and so the whole
        transaction, exactly as the stock INSERT does.
        """
        rows: LedgerRows | None = kwargs.get("ledger_rows")
        if len(stored_events) + _row_count(rows) <= ONE_ROUND_TRIP_ROWS_MAX:
            with self.datastore.get_connection() as conn:
                return self._insert_in_one_round_trip(conn, stored_events, rows)
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            # The lock timeout, the table lock and the NOTIFY in one round trip: an authorize
            # batch is a handful of rows, and round trips were most of its commit time.
            curs.execute(self._lock_and_notify(bool(stored_events)))
            if rows:
                self._insert_ledger_rows(curs, rows)
            if not stored_events:
                return []
            table = SQL("{}.{}").format(Identifier(self.datastore.schema),
                                        Identifier(self.events_table_name))
            with curs.copy(SQL("COPY {} (originator_id, originator_version, topic, state)"
                               " FROM STDIN (FORMAT BINARY)").format(table)) as copy:
                copy.set_types(["uuid", "int8", "text", "bytea"])
                for event in stored_events:
                    copy.write_row((event.originator_id, event.originator_version, event.topic,
                                    event.state))
            curs.execute(SQL("SELECT currval(pg_get_serial_sequence(%s, 'notification_id'))"),
                         (f"{self.datastore.schema}.{self.events_table_name}",))
            row = curs.fetchone()
            assert row is not None
            last = int(next(iter(row.values())))
            return list(range(last - len(stored_events) + 1, last + 1))

    def _insert_in_one_round_trip(self, conn: Connection[DictRow],
                                  stored_events: Sequence[StoredEvent],
                                  rows: LedgerRows | None) -> list[int]:
        """A small save (an authorization batch, an operator's command) as one query string:
        BEGIN, the lock and NOTIFY, the side rows, the events, their last notification id,
        COMMIT. One round trip instead of about nine, which were most of an authorization's
        latency; the parameters are bound client-side by psycopg (quoted, never pasted).

        Plain INSERTs where the COPY path uses COPY, with the same effect: a duplicate key or
        event version fails its statement, PostgreSQL skips the rest of the string, and the
        transaction is rolled back here before the error goes up.
        """
        params = _rows_params(rows) if rows else []
        for event in stored_events:
            params += (event.originator_id, event.originator_version, event.topic, event.state)
        if stored_events:
            params.append(f"{self.datastore.schema}.{self.events_table_name}")
        query = self._one_round_trip_query(conn, _shape(stored_events, rows))
        cursor = ClientCursor(conn)
        try:
            cursor.execute(query, params)
        except BaseException:
            if conn.info.transaction_status != TransactionStatus.IDLE and not conn.broken:
                conn.execute("ROLLBACK")
            raise
        if not stored_events:
            return []
        row: DictRow | None = None
        while True:  # the last statement that returns a row is the currval (the lock's is void)
            if cursor.description is not None:
                row = cursor.fetchone()
            if not cursor.nextset():
                break
        assert row is not None
        last = int(next(iter(row.values())))
        return list(range(last - len(stored_events) + 1, last + 1))

    def _one_round_trip_query(self, conn: Connection[DictRow], shape: Shape) -> str:
        cache = self._queries
        query = cache.get(shape)
        if query is None:
            schema = Identifier(self.datastore.schema)
            parts: list[Composable] = [SQL("BEGIN"), self._lock_and_notify(bool(shape[4])),
                                       *_rows_sql(schema, shape)]
            if shape[4]:
                parts.append(SQL(
                    "INSERT INTO {}.{} (originator_id, originator_version, topic, state)"
                    " VALUES {}").format(schema, Identifier(self.events_table_name),
                                         _values(shape[4], "(%s, %s, %s, %s)")))
                parts.append(SQL("SELECT currval(pg_get_serial_sequence(%s, 'notification_id'))"))
            parts.append(SQL("COMMIT"))
            query = SQL("; ").join(parts).as_string(conn)
            if len(cache) >= SHAPES_CACHED_MAX:
                cache.clear()
            cache[shape] = query
        return query

    def _lock_and_notify(self, notify: bool) -> Composed:
        statements = [*self.lock_table_statements]
        if notify:
            statements.append(SQL("NOTIFY {0}").format(Identifier(self.channel_name)))
        return SQL("; ").join(statements)

    def _insert_ledger_rows(self, curs: Cursor[DictRow], rows: LedgerRows) -> None:
        schema = Identifier(self.datastore.schema)
        if rows.keys:
            # COPY, not INSERT ... ON CONFLICT: a key already present must abort the whole
            # transaction, events included.
            with curs.copy(SQL("COPY {}.idempotency_keys (scope, key, account_id, request_hash,"
                               " response) FROM STDIN (FORMAT BINARY)").format(schema)) as copy:
                copy.set_types(["text", "text", "uuid", "text", "bytea"])
                for key in rows.keys:
                    copy.write_row((key.scope, key.key, key.account_id, key.request_hash,
                                    key.response))
        if rows.entries:
            with curs.copy(SQL("COPY {}.entry_index (entry_id, account_id, originator_version,"
                               " kind) FROM STDIN").format(schema)) as copy:
                for entry in rows.entries:
                    copy.write_row((entry.entry_id, entry.account_id, entry.originator_version,
                                    entry.kind))
        if rows.unschedule:
            curs.execute(_UNSCHEDULE.format(schema), _columns(rows.unschedule))
        if rows.schedule:
            curs.execute(_SCHEDULE.format(schema), _columns(rows.schedule))
