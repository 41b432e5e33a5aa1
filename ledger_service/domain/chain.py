"""Tamper evidence: a keyed hash chain over one account's events.

chain_hash(n) = "<key id>:" + HMAC-SHA256 hex, under the key that id names, of the UTF-8 bytes

    previous chain_hash (64 zeros for the first event) "\\n"
    event class name (e.g. "UsageRecorded")             "\\n"
    originator_version (decimal)                        "\\n"
    timestamp (times.format_time)                       "\\n"
    msgspec.json.encode(payload, order="sorted")

where payload is every field of the event except the envelope (originator_id,
originator_version, timestamp, originator_topic, chain_hash) as the event was stored (the
library's `class_version` marker aside). Payload fields are JSON primitives only (typed as
domain/payloads.py says), so the encoding of a decoded event is byte-identical to the encoding
at write time; the timestamp is hashed in its canonical text form for the same reason.

An event of an older class version is upcast when it is read (docs/design.md, "Event
versions"): its decoded payload then holds fields it was never hashed with. The chain covers
the stored form, so verifying such an event takes its stored state (`verify_chain`'s
`stored_states`, `stored_payload`); for an event read at the version it was written in, the
decoded payload is the stored one.

The aggregate computes the hash before it triggers the event (events are frozen), and
`verify_chain` recomputes it from decoded events for the operator's `verify`.

Why keyed: an unkeyed SHA-256 chain stored beside the data proves nothing against whoever can
write the database, since they can edit an event and recompute every later hash. The HMAC key
lives outside the database (the service's environment, `LEDGER_CHAIN_KEYS`), so recomputing
needs the key too. The key id travels in each stored hash, so keys rotate: a new first key signs
new events, older keys stay in the keyring to verify old ones. Events written before keying
(a bare 64-hex digest) still verify as plain SHA-256, but once an account has a keyed event an
unkeyed one after it is a break ("unkeyed"): an attacker cannot downgrade a chain.

The keyring is configuration of this pure function, set once per process at start-up
(`configure_chain_keys`); with none configured the chain is unkeyed, as in the unit tests of
the domain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger_service.domain.naming import hashed_name
from ledger_service.domain.times import format_time

GENESIS_HASH: Final = "0" * 64
KEY_ID_PATTERN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
KEY_BYTES_MIN: Final = 32


class ChainKeyError(ValueError):
    """The chain keyring setting is malformed (the message never holds key material)."""


@dataclass(frozen=True, slots=True)
class ChainKeyring:
    """Keys by id; the first signs, all verify."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ChainKeyError("a chain keyring needs at least one key")
        ids = [kid for kid, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise ChainKeyError("chain key ids must be unique")
        for kid, key in self.keys:
            if not kid or len(kid) > 32 or not set(kid) <= KEY_ID_PATTERN_CHARS:
                raise ChainKeyError(f"chain key id {kid!r} must be 1-32 of [A-Za-z0-9_-]")
            if len(key) < KEY_BYTES_MIN:
                raise ChainKeyError(f"chain key {kid!r} must be at least {KEY_BYTES_MIN} bytes")

    @property
    def signing_id(self) -> str:
        return self.keys[0][0]

    def key(self, kid: str) -> bytes | None:
        return next((key for k, key in self.keys if k == kid), None)

    @classmethod
    def parse(cls, text: str) -> ChainKeyring:
        """`kid=base64key,kid2=base64key`: the first signs."""
        keys: list[tuple[str, bytes]] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            kid, sep, encoded = part.partition("=")
            if not sep:
                raise ChainKeyError("each chain key is written kid=base64key")
            try:
                keys.append((kid.strip(), base64.b64decode(encoded.strip(), validate=True)))
            except (binascii.Error, ValueError):
                raise ChainKeyError(f"chain key {kid.strip()!r} is not valid base64") from None
        return cls(tuple(keys))


_keyring: ChainKeyring | None = None


def configure_chain_keys(keyring: ChainKeyring | None) -> None:
    """Set this process's keyring (at start-up, before any event is recorded or verified)."""
    global _keyring
    _keyring = keyring


def chain_keyring() -> ChainKeyring | None:
    return _keyring
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
    keyring = _keyring
    if keyring is None:
        return _digest(None, previous_hash, event_name, originator_version, timestamp, payload)
    kid, key = keyring.keys[0]
    return kid + ":" + _digest(key, previous_hash, event_name, originator_version, timestamp,
                               payload)


def _digest(key: bytes | None, previous_hash: str, event_name: str, originator_version: int,
            timestamp: datetime | str, payload: Mapping[str, Any]) -> str:
    stamp = timestamp if isinstance(timestamp, str) else format_time(timestamp)
    header = f"{previous_hash}\n{event_name}\n{originator_version}\n{stamp}\n".encode()
    body = msgspec.json.encode(payload, order="sorted")
    if key is None:
        return hashlib.sha256(header + body).hexdigest()
    return hmac.new(key, header + body, hashlib.sha256).hexdigest()


def recompute_hash(event: Any, previous_hash: str, stored: str,
                   payload: Mapping[str, Any] | None = None) -> str | None:
    """The hash `event` should carry, under the key its stored hash names, over `payload` (by
    default the event's own: pass the stored payload for an upcast event).

    None when that key is not in this process's keyring (the caller reports "unknown_key").
    """
    kid, sep, _ = stored.partition(":")
    args = (previous_hash, hashed_name(type(event)), event.originator_version, event.timestamp,
            event_payload(event) if payload is None else payload)
    if not sep:
        return _digest(None, *args)
    key = _keyring.key(kid) if _keyring is not None else None
    if key is None:
        return None
    return kid + ":" + _digest(key, *args)


def is_keyed(stored_hash: str) -> bool:
    return ":" in stored_hash


def event_payload(event: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in ENVELOPE_FIELDS}


# The library writes this into the stored state of a class version above 1; never hashed.
CLASS_VERSION_FIELD: Final = "class_version"
_decode_state = msgspec.json.Decoder(dict[str, Any]).decode


def stored_payload(state: bytes) -> dict[str, Any]:
    """The payload of an event as stored (plain JSON state): what its hash was made over."""
    return {k: v for k, v in _decode_state(state).items()
            if k not in ENVELOPE_FIELDS and k != CLASS_VERSION_FIELD}


def is_upcast_class(cls: type[Any]) -> bool:
    """Whether events of `cls` may have been stored at an older shape than they decode to."""
    return getattr(cls, "class_version", 1) > 1


def hash_of_event(event: Any, previous_hash: str) -> str:
    return compute_chain_hash(
        previous_hash,
        hashed_name(type(event)),
        event.originator_version,
        event.timestamp,
        event_payload(event),
    )


@dataclass(frozen=True, slots=True)
class ChainBreak:
    originator_version: int
    event_name: str
    reason: str  # "hash_mismatch" | "version_gap" | "missing_hash" | "unknown_key" | "unkeyed"
    expected: str
    found: str


def verify_chain(events: Iterable[Any], previous_hash: str = GENESIS_HASH,
                 stored_states: Iterable[bytes] | None = None) -> list[ChainBreak]:
    """Recompute the chain of one account's events, in version order.

    `stored_states`, in the same order as `events`, are their states as stored (plain JSON):
    an event of a class that has versions is hashed over its stored payload, not the upcast
    one. Without them every event is hashed over its decoded payload, which is right for
    events that were not upcast.

    After a break, checking continues from the stored hash, so one edited event reports one
    break, and an edited event whose hash was also rewritten reports the break at its successor.
    """
    breaks: list[ChainBreak] = []
    expected_version: int | None = None
    keyed_before = is_keyed(previous_hash)
    states = iter(stored_states) if stored_states is not None else None
    for event in events:
        state = next(states) if states is not None else None
        payload = stored_payload(state) \
            if state is not None and is_upcast_class(type(event)) else None
        name = hashed_name(type(event))
        version = event.originator_version
        if expected_version is not None and version != expected_version:
            breaks.append(ChainBreak(version, name, "version_gap", str(expected_version),
                                     str(version)))
        expected_version = version + 1
        stored = getattr(event, "chain_hash", None)
        if not isinstance(stored, str):
            recomputed = compute_chain_hash(
                previous_hash, hashed_name(type(event)), version, event.timestamp,
                event_payload(event) if payload is None else payload)
            breaks.append(ChainBreak(version, name, "missing_hash", recomputed, repr(stored)))
            previous_hash = recomputed
            continue
        expected = recompute_hash(event, previous_hash, stored, payload)
        if expected is None:
            breaks.append(ChainBreak(version, name, "unknown_key",
                                     "a key id of the keyring", stored.partition(":")[0]))
        elif not hmac.compare_digest(stored, expected):
            breaks.append(ChainBreak(version, name, "hash_mismatch", expected, stored))
        if keyed_before and not is_keyed(stored):
            breaks.append(ChainBreak(version, name, "unkeyed", "a keyed hash", stored))
        keyed_before = keyed_before or is_keyed(stored)
        previous_hash = stored
    return breaks
