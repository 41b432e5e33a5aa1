"""Stored events outlive their classes: stable stored names, logs written before names
existed, and a class renamed with a field added (upcast)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from ledger_service.app.catalogue import Catalogue
from ledger_service.app.ledger import LedgerApplication, project
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.chain import verify_chain
from ledger_service.domain.naming import name_events, named_classes, stored_as, stored_name

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger_log_2026_12.jsonl"


@pytest.fixture(scope="module")
def app() -> Any:
    # The ledger's mapper and transcoder over the in-memory store: nothing here needs a database.
    built = LedgerApplication(env={"MAPPER_TOPIC": "ledger_service.projections.decoding:FastMapper"})
    yield built
    built.close()


def fixture_log() -> tuple[UUID, int, list[tuple[int, str, bytes]]]:
    lines = FIXTURE.read_text().splitlines()
    header = json.loads(lines[0])
    rows = [(r["version"], r["topic"], base64.b64decode(r["state"]))
            for r in map(json.loads, lines[1:])]
    return UUID(header["account_id"]), header["balance_micros"], rows


def all_event_classes(root: type[Any]) -> set[type[Any]]:
    found, todo = set(), [root]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found and sub.__module__.startswith("ledger_service."):
                found.add(sub)
                todo.append(sub)
    return found


def test_every_ledger_event_class_has_a_stored_name() -> None:
    # BillingAccount.Created is the library's own creation event, which the account never
    # records (it opens with Opened).
    classes = (all_event_classes(BillingAccount.Event) - {BillingAccount.Created}) | {
        Catalogue.Replaced, Catalogue.Seeded}
    missing = sorted(c.__qualname__ for c in classes if stored_name(c) is None)
    assert missing == [], f"give these @stored_as names: {missing}"
    assert len(set(named_classes())) == len(named_classes())


def test_events_are_stored_under_their_names_not_their_import_paths(app: Any) -> None:
    account = BillingAccount.open(uuid4(), datetime(2026, 12, 1, tzinfo=UTC), account_type="prepay")
    stored = app.mapper.to_stored_event(next(iter(account.collect_events())))
    assert stored.topic == "ledger.account.Opened"
    assert type(app.mapper.to_domain_event(stored)) is BillingAccount.Opened


@pytest.mark.parametrize("topics", ["as stored (import paths)", "renamed to stored names"])
def test_a_log_written_before_stored_names_still_loads_and_verifies(app: Any, topics: str) -> None:
    account_id, balance_micros, rows = fixture_log()
    events = []
    for version, topic, state in rows:
        if topics == "renamed to stored names":
            topic = topic.replace("ledger_service.domain.account:BillingAccount.", "ledger.account.")
        events.append(app.mapper.to_domain_event(StoredEvent(account_id, version, topic, state)))
    account = project(None, events)
    assert account.balance_micros == balance_micros
    assert account.version == len(rows)
    assert verify_chain(events) == []  # the keyed hashes of Dec 2026 still hold


# A class renamed and moved (it was `Meter.Counted` in its first version) with a field added.
# The name it was stored under stays; class_version and an upcaster carry old events forward.
class Gauge(Aggregate):
    class Measured(Aggregate.Event):
        class_version = 2
        amount: int
        unit: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["unit"] = "messages"  # what every first-version count counted


name_events({"ledger.testgauge.Counted": Gauge.Measured})


def test_an_event_of_a_renamed_class_with_a_new_field_is_upcast(app: Any) -> None:
    # What the first version stored: its name, and a state without `unit` or a class version.
    first_version_state = app.mapper.transcoder.encode(
        {"timestamp": datetime(2026, 12, 1, tzinfo=UTC), "amount": 5})
    stored = StoredEvent(uuid4(), 1, "ledger.testgauge.Counted", first_version_state)
    event = app.mapper.to_domain_event(stored)
    assert type(event) is Gauge.Measured
    assert (event.amount, event.unit) == (5, "messages")
    again = app.mapper.to_stored_event(event)
    assert again.topic == "ledger.testgauge.Counted"
    assert json.loads(again.state)["class_version"] == 2


def test_a_stored_name_cannot_be_taken_twice() -> None:
    with pytest.raises(ValueError, match="already"):
        stored_as("ledger.account.Opened")(type("Impostor", (), {}))
    with pytest.raises(ValueError, match="must read like"):
        stored_as("ledger_service.domain.account:BillingAccount.Opened")
