"""Stored names of events: stable, versioned, independent of where the class lives.

The library stores an event under its "topic", by default the class's import path
(`ledger_service.domain.account:BillingAccount.UsageRecorded`): moving or renaming the class
would then need a data migration. Every ledger event instead declares a stored name with
`@stored_as("ledger.account.UsageRecorded")`, which

- the ledger's mapper writes as the topic (projections/decoding.py `FastMapper`),
- the library resolves back to the class (its public `register_topic`), together with the
  import path the event was stored under before names existed (`FORMER_TOPIC_PREFIXES`: that
  path is history, so it keeps resolving after the class is renamed or moved),
- the hash chain hashes (its last segment, which is the class name the event had when its
  name was given), so a renamed class still verifies, and
- the code that tells events apart by kind reads (`event_name`: the same last segment), as
  does what leaves the process (the entry index's kind, the audit API's event type).

The rules (docs/design.md, "Event versions"): a stored name never changes and is never reused.
A class may move or be renamed freely; its name goes with it. A change of shape raises the
class's `class_version` and adds a static `upcast_vN_vN+1(state)` that fills the new field
for events stored before (the library's upcasting); a field is never removed or re-typed in
place. A new kind of event is a new class with a new name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from eventsourcing.utils import register_topic

T = TypeVar("T", bound=type[Any])

_NAME_OF: dict[type[Any], str] = {}
_CLASS_OF: dict[str, type[Any]] = {}
NAME_PREFIXES: Final = ("ledger.",)
# Where events were stored before stored names existed (the library's default topic, the
# class's import path, with the class's name then, which is the stored name's last segment).
FORMER_TOPIC_PREFIXES: Final = {
    "ledger.account.": "ledger_service.domain.account:BillingAccount.",
    "ledger.catalogue.": "ledger_service.app.catalogue:Catalogue.",
}


def stored_as(name: str) -> Callable[[T], T]:
    """Give an event class its stored name (at class definition)."""
    if not name.startswith(NAME_PREFIXES) or ":" in name or name.count(".") < 2:
        raise ValueError(f"stored name {name!r} must read like ledger.<aggregate>.<Event>")

    def register(cls: T) -> T:
        if _CLASS_OF.get(name, cls) is not cls:
            raise ValueError(f"stored name {name!r} is already {_CLASS_OF[name]!r}")
        _NAME_OF[cls] = name
        _CLASS_OF[name] = cls
        register_topic(name, cls)
        prefix, _, last = name.rpartition(".")
        former = FORMER_TOPIC_PREFIXES.get(prefix + ".")
        if former is not None:
            register_topic(former + last, cls)
        return cls

    return register


def name_events(names: dict[str, type[Any]]) -> None:
    """Name event classes after their aggregate class is built.

    For an aggregate whose nested events subclass the library's `Aggregate.Event` rather than
    the aggregate's own `Event`, the library's metaclass replaces each nested class with a
    subclass of the aggregate's `Event`: a decorator inside the class body would name the
    class that was replaced. Name those here, after the class statement.
    """
    for name, cls in names.items():
        stored_as(name)(cls)


def stored_name(cls: type[Any]) -> str | None:
    return _NAME_OF.get(cls)


def event_name(cls: type[Any]) -> str:
    """An event class's stable short name (`UsageRecorded`), fixed by its stored name, not
    the class's current name: what code that tells events apart reads."""
    name = _NAME_OF.get(cls)
    return name.rsplit(".", 1)[1] if name is not None else cls.__name__


def hashed_name(cls: type[Any]) -> str:
    """The event name the chain hashes: fixed by the stored name, not the class's."""
    return event_name(cls)


def named_classes() -> dict[str, type[Any]]:
    return dict(_CLASS_OF)
