"""Tamper evidence: a hash chain over one account's events.

chain_hash(n) = sha256 hex of the UTF-8 bytes

    previous chain_hash (64 zeros for the first event) "\\n"
    event class name (e.g. "UsageRecorded")             "\\n"
    originator_version (decimal)                        "\\n"
    timestamp (times.format_time)                       "\\n"
    msgspec.json.encode(payload, order="sorted")

where payload is every field of the event except the envelope (originator_id,
originator_version, timestamp, originator_topic, chain_hash). Payload fields are JSON
primitives only, so the encoding of a decoded event is byte-identical to the encoding at
write time; the timestamp is hashed in its canonical text form for the same reason.

The aggregate computes the hash before it triggers the event (events are frozen), and
`verify_chain` recomputes it from decoded events for the operator's `verify`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger_service.domain.times import format_time

GENESIS_HASH: Final = "0" * 64
ENVELOPE_FIELDS: Final = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic", "chain_hash"}
)


def compute_chain_hash(
    previous_hash: str,
    event_name: str,
    originator_version: int,
    timestamp: datetime | str,
    payload: Mapping[str, Any],
) -> str:
    stamp = timestamp if isinstance(timestamp, str) else format_time(timestamp)
    header = f"{previous_hash}\n{event_name}\n{originator_version}\n{stamp}\n".encode()
    body = msgspec.json.encode(payload, order="sorted")
    return hashlib.sha256(header + body).hexdigest()


def event_payload(event: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in ENVELOPE_FIELDS}


def hash_of_event(event: Any, previous_hash: str) -> str:
    return compute_chain_hash(
        previous_hash,
        type(event).__name__,
        event.originator_version,
        event.timestamp,
        event_payload(event),
    )


@dataclass(frozen=True, slots=True)
class ChainBreak:
    originator_version: int
    event_name: str
    reason: str  # "hash_mismatch" | "version_gap" | "missing_hash"
    expected: str
    found: str


def verify_chain(events: Iterable[Any], previous_hash: str = GENESIS_HASH) -> list[ChainBreak]:
    """Recompute the chain of one account's events, in version order.

    After a break, checking continues from the stored hash, so one edited event reports one
    break, and an edited event whose hash was also rewritten reports the break at its successor.
    """
    breaks: list[ChainBreak] = []
    expected_version: int | None = None
    for event in events:
        name = type(event).__name__
        version = event.originator_version
        if expected_version is not None and version != expected_version:
            breaks.append(ChainBreak(version, name, "version_gap", str(expected_version),
                                     str(version)))
        expected_version = version + 1
        stored = getattr(event, "chain_hash", None)
        recomputed = hash_of_event(event, previous_hash)
        if not isinstance(stored, str):
            breaks.append(ChainBreak(version, name, "missing_hash", recomputed, repr(stored)))
            previous_hash = recomputed
            continue
        if stored != recomputed:
            breaks.append(ChainBreak(version, name, "hash_mismatch", recomputed, stored))
        previous_hash = stored
    return breaks
