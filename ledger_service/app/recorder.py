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

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier


@dataclass(slots=True)
class IdempotencyRow:
    scope: str
    key: str
    account_id: UUID | None
    request_hash: str | None = None
    response: bytes | None = None


@dataclass(slots=True)
class EntryRow:
    entry_id: UUID
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
            # A plain INSERT, not ON CONFLICT: a key already present must abort the whole
            # transaction, events included.
            curs.execute(
                SQL(
                    "INSERT INTO {}.idempotency_keys (scope, key, account_id, request_hash, response)"
                    " SELECT * FROM unnest(%s::text[], %s::text[], %s::uuid[], %s::text[], %s::bytea[])"
                ).format(schema),
                (
                    [r.scope for r in rows.keys],
                    [r.key for r in rows.keys],
                    [r.account_id for r in rows.keys],
                    [r.request_hash for r in rows.keys],
                    [r.response for r in rows.keys],
                ),
                prepare=True,
            )
        if rows.entries:
            curs.execute(
                SQL(
                    "INSERT INTO {}.entry_index (entry_id, account_id, originator_version, kind)"
                    " SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[], %s::text[])"
                ).format(schema),
                (
                    [r.entry_id for r in rows.entries],
                    [r.account_id for r in rows.entries],
                    [r.originator_version for r in rows.entries],
                    [r.kind for r in rows.entries],
                ),
                prepare=True,
            )
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
