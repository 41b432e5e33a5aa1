"""Stored events, decoded fast enough for catch-up, rebuild and verify.

eventsourcing's mapper decodes with the stdlib json module and an object hook: about 50,000
of our events a second, which alone would cap a rebuild below the 100,000 events/s we need.
Ledger payloads are JSON primitives by design (see domain/chain.py), and the only typed value
the transcoder writes is the envelope's timestamp, so msgspec decodes the state (typed: each
ledger event class's payload, domain/payloads.py), we undo that one transcoding ourselves and
upcast older class versions as the library does. Anything else (a second typed value, a
cipher, a compressor) goes through the library's own mapper, so the result is always the
object the mapper would have built (tests/property/test_projections_statement.py pins it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple, TypedDict, Union, cast
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
_encode_json = msgspec.json.Encoder().encode


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
    199 events: 3.5 -> 3.2 ms). Anything else (state with more than one typed value, a
    cipher) is the library's own decoding.

    It encodes a ledger event whose payload is JSON primitives only (`is_plain_event_class`:
    every one today) with msgspec too, into the bytes the library's JSON transcoder writes
    (the same compact separators, the same escapes, non-ASCII kept; pinned by
    tests/property/test_event_encoding.py): an intake batch's usage event of 50 lines took
    235 us through the library's stdlib encoder, 31 us this way (bench/event_codec.py)."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        cls = type(domain_event)
        name = stored_name(cls)
        if name is None:
            return super().to_stored_event(domain_event)
        transcodings = fast_transcodings(self)
        if transcodings is not None and is_plain_event_class(cls):
            state = dict(vars(domain_event))
            originator_id = state.pop("originator_id")
            originator_version = state.pop("originator_version")
            class_version = getattr(cls, "class_version", 1)
            if class_version > 1:
                state["class_version"] = class_version
            stamp = state["timestamp"]
            transcoding = cast(JSONTranscoder, self.transcoder).types.get(type(stamp))
            if transcoding is not None:
                state["timestamp"] = {"_type_": transcoding.name,
                                      "_data_": transcoding.encode(stamp)}
                return StoredEvent(originator_id, originator_version, name, _encode_json(state))
        stored = super().to_stored_event(domain_event)
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


class StoredEventSchemaError(ValueError):
    """A stored ledger event whose state does not match its class's typed payload."""


def decode_fast(transcodings: Mapping[str, Transcoding], topic: str, originator_id: Any,
                originator_version: int, state_bytes: bytes) -> Any | None:
    """The event the library's mapper would build, or None where this cannot tell (then the
    caller asks the mapper).

    A ledger event (one with a stored name) is decoded with a msgspec decoder of its class's
    typed payload (domain/payloads.py), which checks every field as it decodes, at the cost
    of untyped decoding (bench/event_codec.py). State of an older class version is upcast
    here, as the library's mapper would (its `upcast_vN_vN+1` static methods in order), and
    then checked against the current payload. A state that does not fit raises
    StoredEventSchemaError: the library's mapper would build an event from it that the
    domain's code was never written for. A key the class does not declare is dropped (msgspec
    decodes TypedDicts so); the chain, recomputed over the decoded payload, then reports the
    event to `verify`."""
    cls, class_version, typed = _event_schema(topic)
    state: Any
    if typed is None:
        state = _decode_json(state_bytes)
    else:
        try:
            state = typed.decode(state_bytes)
        except msgspec.ValidationError:
            state = _decode_json(state_bytes)
            if not isinstance(state, dict) or state.get("class_version", 1) >= class_version:
                _raise_schema_error(typed, topic, originator_version, state_bytes)
    stamp = state.get("timestamp") if isinstance(state, dict) else None
    if not isinstance(stamp, dict) or len(stamp) != 2 or "_type_" not in stamp \
            or "_data_" not in stamp:
        return None
    transcoding = transcodings.get(stamp["_type_"])
    if transcoding is None:
        return None
    stored_version = state.pop("class_version", 1)
    if stored_version < class_version:
        _upcast(cls, stored_version, class_version, state)
        if typed is not None:
            try:
                state = msgspec.convert(state, typed.type)
            except msgspec.ValidationError as exc:
                raise StoredEventSchemaError(
                    f"{topic} at version {originator_version}, upcast from class version"
                    f" {stored_version}: {exc}") from exc
    state["timestamp"] = transcoding.decode(state["timestamp"]["_data_"])
    state["originator_id"] = originator_id
    state["originator_version"] = originator_version
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", state)
    return event


def _upcast(cls: type[Any], from_version: int, to_version: int, state: dict[str, Any]) -> None:
    while from_version < to_version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1


def _raise_schema_error(typed: msgspec.json.Decoder[Any], topic: str, originator_version: int,
                        state_bytes: bytes) -> None:
    try:
        typed.decode(state_bytes)
    except msgspec.ValidationError as exc:
        raise StoredEventSchemaError(f"{topic} at version {originator_version}: {exc}") from exc


# The envelope's timestamp as the library's transcoder stores it.
class StoredTimestamp(TypedDict):
    _type_: str
    _data_: str


@lru_cache(maxsize=256)
def _event_schema(topic: str) -> tuple[type[Any], int, msgspec.json.Decoder[Any] | None]:
    """The topic's class, its class version and, for a ledger event (one with a stored name),
    the decoder of its stored state (None: decoded untyped, as a snapshot is)."""
    cls: type[Any] = resolve_topic(topic)
    class_version = getattr(cls, "class_version", 1)
    if stored_name(cls) is None:
        return cls, class_version, None
    return cls, class_version, msgspec.json.Decoder(stored_state_type(cls))


def stored_state_type(cls: type[Any]) -> Any:
    """The TypedDict of an event class's stored state: every annotated field (a field with a
    default may be absent, as in events stored before it existed), the envelope's timestamp
    as stored, and the class version the library adds from version 2 on."""
    defaults = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    fields: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if name in ("originator_id", "originator_version") \
                or typing.get_origin(hint) is typing.ClassVar:
            continue
        if name == "timestamp":
            hint = StoredTimestamp
        fields[name] = typing.NotRequired[hint] if name in defaults else hint
    fields["class_version"] = typing.NotRequired[int]
    return TypedDict(f"{cls.__name__}StoredState", fields)  # type: ignore[operator]


# Types msgspec and the library's stdlib transcoder write alike (no float: their shortest
# representations may differ; no datetime, UUID or Decimal: the transcoder tags them; no Any:
# it says nothing of what is there).
_PLAIN_LEAVES: Final = (str, int, bool, type(None))


_plain_classes: dict[type[Any], bool] = {}


def is_plain_event_class(cls: type[Any]) -> bool:
    """Whether every payload field of `cls` is JSON primitives by its type hints (the
    envelope's timestamp aside), so msgspec encodes its state as the library would."""
    plain = _plain_classes.get(cls)
    if plain is None:
        plain = _plain_classes[cls] = all(
            _is_plain(hint) for name, hint in typing.get_type_hints(cls).items()
            if name not in ("originator_id", "originator_version", "timestamp")
            and typing.get_origin(hint) is not typing.ClassVar)
    return plain


def _is_plain(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint in _PLAIN_LEAVES:
        return True
    if origin is Literal:
        return all(isinstance(v, _PLAIN_LEAVES) and not isinstance(v, float)
                   for v in typing.get_args(hint))
    if origin in (Union, types.UnionType, list):
        return all(_is_plain(arg) for arg in typing.get_args(hint))
    if origin is dict:
        key, value = typing.get_args(hint)
        return key is str and _is_plain(value)
    if origin in (typing.NotRequired, typing.Required):
        return _is_plain(typing.get_args(hint)[0])
    if typing.is_typeddict(hint):
        return all(_is_plain(h) for h in typing.get_type_hints(hint).values())
    return False
