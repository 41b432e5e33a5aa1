"""The event log as the tools read it: its head, its size and its rows, streamed.

One definition of each read for `verify`, the replay, the projection runner, the anchors and
`ledgerctl`'s raw events and exports, so they cannot drift apart (they did: the CLI carried its
own copies of verify's queries).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, Literal
from uuid import UUID

import psycopg

from ledger_service.projections.decoding import ROW_COLUMNS, StoredRow, stored_row

ROWS_FETCHED_PER_ROUND_TRIP: Final = 5_000
_HEAD: Final = "SELECT coalesce(max(notification_id), 0) FROM ledger_events"

# "log": the whole log in the order it was written (exports); "account": account by account,
# each in version order (verify, which checks one account's chain at a time). One account's
# rows are always in version order.
RowOrder = Literal["log", "account"]


def log_head(conn: psycopg.Connection[Any]) -> int:
    """The position (notification id) of the newest event in the log; 0 when it is empty."""
    row = conn.execute(_HEAD).fetchone()
    return int(row[0]) if row else 0


def events_count(conn: psycopg.Connection[Any], account_id: UUID | None = None) -> int:
    if account_id is None:
        row = conn.execute("SELECT count(*) FROM ledger_events").fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM ledger_events WHERE originator_id = %s",
                           (account_id,)).fetchone()
    return int(row[0]) if row else 0


def event_rows(conn: psycopg.Connection[Any], *, account_id: UUID | None = None,
               order: RowOrder = "log", cursor_name: str = "event_rows",
               rows_per_round_trip: int = ROWS_FETCHED_PER_ROUND_TRIP) -> Iterator[StoredRow]:
    """Stored events, streamed through a server-side cursor (so the caller holds a
    transaction open while it iterates): one account's in version order, or the whole log in
    ``order``."""
    if account_id is not None:
        query = (f"SELECT {ROW_COLUMNS} FROM ledger_events WHERE originator_id = %s"  # noqa: S608
                 " ORDER BY originator_version")
        params: tuple[Any, ...] = (account_id,)
    else:
        sort = "notification_id" if order == "log" else "originator_id, originator_version"
        query = f"SELECT {ROW_COLUMNS} FROM ledger_events ORDER BY {sort}"  # noqa: S608
        params = ()
    with conn.cursor(name=cursor_name, binary=True) as cur:
        cur.itersize = rows_per_round_trip
        cur.execute(query, params)
        for values in cur:
            yield stored_row(values)
