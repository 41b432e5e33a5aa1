"""Stored events, decoded fast enough for catch-up, rebuild and verify.

eventsourcing's mapper decodes with the stdlib json module and an object hook: about 50,000
of our events a second, which alone would cap a rebuild below the 100,000 events/s we need.
Ledger payloads are JSON primitives by design (see domain/chain.py), and the only typed value
the transcoder writes is the envelope's timestamp, so msgspec decodes the state and we undo
that one transcoding ourselves. Anything else (a second typed value, a cipher, a compressor,
an upcast class version) goes through the library's own mapper, so the result is always the
object the mapper would have built (tests/property/test_projections_statement.py pins it).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, NamedTuple
from uuid import UUID

import msgspec
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent, Transcoding
from eventsourcing.utils import resolve_topic

from ledger_service.domain.naming import stored_name

# Account events are stored under `ledger.account.<Event>` (domain/naming.py); those stored
# before stored names existed, under the class's import path.
ACCOUNT_TOPIC_PREFIX: Final = "ledger.account."
LEGACY_ACCOUNT_TOPIC_PREFIX: Final = "ledger_service.domain.account:BillingAccount."
ACCOUNT_TOPIC_PREFIXES: Final = (ACCOUNT_TOPIC_PREFIX, LEGACY_ACCOUNT_TOPIC_PREFIX)
_TYPED_VALUE: Final = b'"_type_"'
_decode_json = msgspec.json.Decoder().decode


class StoredRow(NamedTuple):
    """One row of ledger_events, as read for projections and audits.

    A named tuple, not a frozen dataclass: as immutable, and built in half the time, once per
    event a catch-up reads."""

    position: int  # notification_id: the event's place in the whole log
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes

    @property
    def is_account_event(self) -> bool:
        return self.topic.startswith(ACCOUNT_TOPIC_PREFIXES)


# The columns of StoredRow, in order, for SELECTs that build one.
ROW_COLUMNS: Final = "notification_id, originator_id, originator_version, topic, state"


def stored_row(row: tuple[Any, ...]) -> StoredRow:
    state = row[4]
    return StoredRow(int(row[0]), row[1], int(row[2]), row[3],
                     state if type(state) is bytes else bytes(state))


class EventDecoder:
    def __init__(self, mapper: Mapper[Any]) -> None:
        self.mapper = mapper
        self._transcodings = fast_transcodings(mapper)

    def decode(self, row: StoredRow) -> Any:
        if self._transcodings is not None and row.state.count(_TYPED_VALUE) == 1:
            event = decode_fast(self._transcodings, row.topic, row.originator_id,
                                row.originator_version, row.state)
            if event is not None:
                return event
        return self.mapper.to_domain_event(
            StoredEvent(row.originator_id, row.originator_version, row.topic, row.state))


class FastMapper(Mapper[UUID]):
    """The library's mapper, decoding as `EventDecoder` does what it can (every ledger event),
    and storing each event under its stable name (domain/naming.py) instead of its import path.

    It is the ledger application's mapper (app/ledger.py), so loading an account, which
    replays up to 99 events after its snapshot, decodes them with msgspec (a cold load of
    199 events: 3.5 -> 3.2 ms). Anything else (a snapshot, an upcast) is the library's own
    decoding."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        stored = super().to_stored_event(domain_event)
        name = stored_name(type(domain_event))
        if name is None:
            return stored
        return StoredEvent(stored.originator_id, stored.originator_version, name, stored.state)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        transcodings = fast_transcodings(self)
        state = stored_event.state
        if transcodings is not None and type(state) is bytes and state.count(_TYPED_VALUE) == 1:
            event = decode_fast(transcodings, stored_event.topic,
                                stored_event.originator_id, stored_event.originator_version,
                                state)
            if event is not None:
                return event
        return super().to_domain_event(stored_event)


def fast_transcodings(mapper: Mapper[Any]) -> Mapping[str, Transcoding] | None:
    """The transcoder's transcodings by name if the fast decoding applies to this mapper's
    stored state (plain JSON: no cipher, no compressor), else None."""
    transcoder = mapper.transcoder
    if mapper.cipher is None and mapper.compressor is None \
            and isinstance(transcoder, JSONTranscoder):
        return transcoder.names
    return None


def decode_fast(transcodings: Mapping[str, Transcoding], topic: str, originator_id: Any,
                originator_version: int, state_bytes: bytes) -> Any | None:
    """The event the library's mapper would build, or None where this cannot tell (then the
    caller asks the mapper)."""
    cls = _unversioned_event_class(topic)
    if cls is None:
        return None
    state = _decode_json(state_bytes)
    stamp = state.get("timestamp") if isinstance(state, dict) else None
    if not isinstance(stamp, dict) or len(stamp) != 2 or "_type_" not in stamp \
            or "_data_" not in stamp or "class_version" in state:
        return None
    transcoding = transcodings.get(stamp["_type_"])
    if transcoding is None:
        return None
    state["timestamp"] = transcoding.decode(stamp["_data_"])
    state["originator_id"] = originator_id
    state["originator_version"] = originator_version
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", state)
    return event


@lru_cache(maxsize=256)
def _unversioned_event_class(topic: str) -> type[Any] | None:
    """The topic's class; None if it has a class version (upcasting is the mapper's)."""
    cls: type[Any] = resolve_topic(topic)
    return cls if getattr(cls, "class_version", 1) == 1 else None
