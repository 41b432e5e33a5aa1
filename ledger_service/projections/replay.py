"""Replaying the log: an account's state from its events alone, at any instant.

No snapshot and no projection is consulted: this is what an auditor trusts, and what the
projections and `verify` are checked against. An account's events are read in version order
and applied with the aggregate's own `mutate`, which also refuses an event out of sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from ledger_service.domain.account import BillingAccount
from ledger_service.projections.decoding import EventDecoder, StoredRow
from ledger_service.projections.eventlog import event_rows

EVENTS_FETCHED_PER_ROUND_TRIP = 2_000


def account_rows(conn: psycopg.Connection[Any], account_id: UUID) -> Iterator[StoredRow]:
    """An account's stored events in version order, streamed."""
    return event_rows(conn, account_id=account_id, cursor_name=f"account_rows_{account_id.hex}",
                      rows_per_round_trip=EVENTS_FETCHED_PER_ROUND_TRIP)


def fold(events: Iterable[Any], account: BillingAccount | None = None) -> BillingAccount | None:
    for event in events:
        account = event.mutate(account)
    return account


@dataclass(frozen=True, slots=True)
class Replayed:
    account: BillingAccount
    events: int  # applied
    position: int  # notification_id of the last event applied


def replay_account(conn: psycopg.Connection[Any], decoder: EventDecoder, account_id: UUID,
                   as_of: datetime | None = None) -> Replayed | None:
    """The account after its events recorded at or before ``as_of`` (all of them if None);
    None if it had none by then.

    Events are in version order and each command stamps its events with its own clock, so
    the first event after ``as_of`` ends the replay: the same rule as the balance route's
    ``?as_of=``.
    """
    account: BillingAccount | None = None
    applied = 0
    position = 0
    with conn.transaction():  # a server-side cursor lives in a transaction
        for row in account_rows(conn, account_id):
            if not row.is_account_event:
                return None
            event = decoder.decode(row)
            if as_of is not None and event.timestamp > as_of:
                break
            account = event.mutate(account)
            applied += 1
            position = row.position
    if account is None:
        return None
    return Replayed(account, applied, position)
