"""The event store's recorder, extended so the ledger's side tables commit with the events.

eventsourcing hands ``Application.save(..., ledger_rows=...)`` keyword arguments through to the
recorder's ``_insert_events`` inside the insert transaction. We use that hook to write
idempotency keys, the entry index and the expiry schedule in the same transaction: a key is
recorded if and only if its effect is, which is what makes "exactly once" true across
crashes and across two intake processes (the second one's insert of the same key fails, its
whole transaction rolls back, and it retries to find the key already there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier


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


class LedgerRecorder(PostgresApplicationRecorder):
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Insert events and side rows with COPY, in one transaction under the table lock.

        The stock recorder binds an array of composite values, whose dumping in Python took a
        third of an intake batch; COPY streams the same rows several times faster. Under the
        EXCLUSIVE lock no other transaction draws from the notification sequence, so the ids
        of our rows are the contiguous run that ends at currval. A duplicate key (a stale
        aggregate version, an idempotency key already used) fails the COPY and so the whole
        transaction, exactly as the stock INSERT does.
        """
        rows: LedgerRows | None = kwargs.get("ledger_rows")
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

    def _lock_and_notify(self, notify: bool) -> Composed:
        statements = [*self.lock_table_statements]
        if notify:
            statements.append(SQL("NOTIFY {0}").format(Identifier(self.channel_name)))
        return SQL("; ").join(statements)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        rows: LedgerRows | None = kwargs.get("ledger_rows")
        if rows:
            self._insert_ledger_rows(curs, rows)
        super()._insert_events(curs, stored_events, **kwargs)

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
            curs.execute(
                SQL(
                    "DELETE FROM {}.expiry_schedule s USING unnest(%s::uuid[], %s::timestamptz[])"
                    " AS d(account_id, due_at)"
                    " WHERE s.account_id = d.account_id AND s.due_at <= d.due_at"
                ).format(schema),
                ([a for a, _ in rows.unschedule], [d for _, d in rows.unschedule]),
            )
        if rows.schedule:
            curs.execute(
                SQL(
                    "INSERT INTO {}.expiry_schedule (account_id, due_at)"
                    " SELECT * FROM unnest(%s::uuid[], %s::timestamptz[]) ON CONFLICT DO NOTHING"
                ).format(schema),
                ([a for a, _ in rows.schedule], [d for _, d in rows.schedule]),
            )
