"""Instants as the model stores them.

Every time in an event payload or in aggregate state is one fixed-width RFC 3339 string in UTC
with microseconds (`2026-02-20T09:30:00.000000Z`). One format means the canonical JSON of a
payload is byte-identical after a round-trip through the event store, and fixed width means
two such strings compare in the same order as the instants they name, so state compares
expiry times without parsing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger_service.domain.errors import InvalidRequest


def check_aware(moment: datetime, name: str = "now") -> datetime:
    if not isinstance(moment, datetime):
        raise InvalidRequest(f"{name} must be a datetime")
    offset = moment.utcoffset()
    if offset is None:
        raise InvalidRequest(f"{name} must be timezone-aware")
    return moment


def format_time(moment: datetime) -> str:
    utc = check_aware(moment, "time").astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)
