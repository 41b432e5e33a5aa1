"""invoicing.v1.recurring.* into the outbox, and the item's history row, in the transaction
that changes the item: what is announced and what is recorded never disagree. (Charges are
announced in bulk by renewals.Renewals._record_charged, into the same outbox.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from contracts.invoicing import (
    RecurringPastDue,
    RecurringResumed,
    RecurringSuspended,
)
from contracts.subjects import (
    INVOICING_RECURRING_PAST_DUE,
    INVOICING_RECURRING_RESUMED,
    INVOICING_RECURRING_SUSPENDED,
)
from services.outbox import enqueue

Conn = psycopg.AsyncConnection[Any]

# The relay LISTENs here; every enqueue NOTIFYs it at commit.
OUTBOX_CHANNEL: Final = "invoicing_outbox"


async def record(conn: Conn, item_id: UUID, account_id: UUID, kind: str, at: datetime,
                 **data: Any) -> None:
    """Append one row to the item's history (recurring_item_events, append-only)."""
    await conn.execute(
        "INSERT INTO recurring_item_events (item_id, account_id, kind, data, occurred_at)"
        " VALUES (%s, %s, %s, %s, %s)",
        (item_id, account_id, kind, Jsonb(data), at))


async def announce_past_due(conn: Conn, message: RecurringPastDue) -> None:
    await enqueue(conn, INVOICING_RECURRING_PAST_DUE, message, channel=OUTBOX_CHANNEL)


async def announce_suspended(conn: Conn, message: RecurringSuspended) -> None:
    await enqueue(conn, INVOICING_RECURRING_SUSPENDED, message, channel=OUTBOX_CHANNEL)


async def announce_resumed(conn: Conn, message: RecurringResumed) -> None:
    await enqueue(conn, INVOICING_RECURRING_RESUMED, message, channel=OUTBOX_CHANNEL)
