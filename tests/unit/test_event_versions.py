"""Stored events outlive their classes: stable stored names, logs written before names
existed, and a class renamed with a field added (upcast)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper, StoredEvent

from contracts.money import CURRENCIES
from ledger_service.app.catalogue import Catalogue
from ledger_service.app.ledger import LedgerApplication, project
from ledger_service.domain import payloads
from ledger_service.domain.account import SETTINGS_CHANGEABLE, BillingAccount
from ledger_service.domain.chain import verify_chain
from ledger_service.domain.grants import GRANT_KINDS
from ledger_service.domain.naming import (
    event_name,
    hashed_name,
    name_events,
    named_classes,
    stored_as,
    stored_name,
)
from ledger_service.domain.pricing import TIERS
from ledger_service.domain.values import ACCOUNT_TYPES, BILLING_BASES, USAGE_STATUSES
from ledger_service.projections.decoding import StoredEventSchemaError

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
    # The keyed hashes of Dec 2026 still hold, over the events as stored: Opened was written
    # at class version 1 and is read upcast to version 2 (with an actor it was never hashed
    # with).
    assert verify_chain(events, stored_states=[state for _, _, state in rows]) == []
    assert (type(events[0]).class_version, events[0].actor) == (2, None)


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


# ---------------------------------------------------------------- a real evolution: Opened v2


def test_an_upcast_event_verifies_only_over_its_stored_form(app: Any) -> None:
    # Opened v1 (the fixture's first event) decodes with `actor` added by its upcaster; the
    # chain hashed the state without it, so hashing the decoded event would see a forgery.
    account_id, _, rows = fixture_log()
    version, topic, state = rows[0]
    opened = app.mapper.to_domain_event(StoredEvent(account_id, version, topic, state))
    assert [b.reason for b in verify_chain([opened])] == ["hash_mismatch"]
    assert verify_chain([opened], stored_states=[state]) == []


def test_the_fast_decoder_upcasts_as_the_library_does(app: Any) -> None:
    account_id, _, rows = fixture_log()
    version, topic, state = rows[0]
    stored = StoredEvent(account_id, version, topic, state)
    fast = app.mapper.to_domain_event(stored)
    library = Mapper.to_domain_event(app.mapper, stored)
    assert type(fast) is type(library) is BillingAccount.Opened
    assert vars(fast) == vars(library)


def test_an_account_opened_now_is_stored_at_version_2_with_its_actor(app: Any) -> None:
    account = BillingAccount.open(uuid4(), datetime(2026, 12, 1, tzinfo=UTC),
                                  account_type="prepay", actor="ops@example")
    opened = next(iter(account.collect_events()))
    stored = app.mapper.to_stored_event(opened)
    assert json.loads(stored.state)["class_version"] == 2
    again = app.mapper.to_domain_event(stored)
    assert again.actor == "ops@example"
    assert verify_chain([again]) == verify_chain([again], stored_states=[stored.state]) == []


def test_todays_mapper_stores_the_fixture_events_byte_for_byte(app: Any) -> None:
    # Typed payloads changed no stored JSON: every event but the upcast one re-encodes to
    # exactly the bytes the old code wrote, so the projections' SQL reads what it read.
    account_id, _, rows = fixture_log()
    for version, topic, state in rows[1:]:
        event = app.mapper.to_domain_event(StoredEvent(account_id, version, topic, state))
        assert app.mapper.to_stored_event(event).state == state, type(event).__name__


# ------------------------------------------------------------------------- typed payloads


def _fixture_event_state(name: str) -> tuple[UUID, int, str, dict[str, Any]]:
    account_id, _, rows = fixture_log()
    version, topic, state = next(r for r in rows if r[1].endswith("." + name))
    return account_id, version, topic, json.loads(state)


@pytest.mark.parametrize(("event_name", "corrupt"), [
    ("CreditGranted", lambda s: s.update(kind="gift")),  # not a GrantKind
    ("CreditGranted", lambda s: s["postings"][0].pop("currency")),
    ("UsageRecorded", lambda s: s["lines"][0].update(status="sent")),
    ("UsageRecorded", lambda s: s["lines"][0].update(quantity="3")),
    ("Adjusted", lambda s: s.update(direction="sideways")),
    ("Refunded", lambda s: s["restorations"][0].update(effect="lost")),
    ("Opened", lambda s: s.update(currency="JPY")),
])
def test_a_stored_event_outside_its_typed_payload_is_undecodable(
        app: Any, event_name: str, corrupt: Any) -> None:
    account_id, version, topic, state = _fixture_event_state(event_name)
    corrupt(state)
    stored = StoredEvent(account_id, version, topic, json.dumps(state).encode())
    with pytest.raises(StoredEventSchemaError, match=event_name):
        app.mapper.to_domain_event(stored)


def test_the_payload_vocabularies_are_the_domains() -> None:
    assert set(get_args(payloads.Currency)) == set(CURRENCIES)
    assert set(get_args(payloads.GrantKind)) == set(GRANT_KINDS)
    assert set(get_args(payloads.UsageStatus)) == set(USAGE_STATUSES)
    assert set(get_args(payloads.AccountType)) == set(ACCOUNT_TYPES)
    assert set(get_args(payloads.BillingBasis)) == set(BILLING_BASES)
    assert set(get_args(payloads.Tier)) == set(TIERS)
    assert set(payloads.SettingsChanges.__annotations__) == SETTINGS_CHANGEABLE


def test_a_renamed_ledger_class_keeps_its_stored_name_and_former_topic(app: Any) -> None:
    # BillingAccount.AccountOverdrawn became BillingAccount.Overdrawn: events stored under the
    # name, and those stored under the import path before names existed, still load as it,
    # and the code that tells events apart still calls it AccountOverdrawn.
    cls = BillingAccount.Overdrawn
    assert stored_name(cls) == "ledger.account.AccountOverdrawn"
    assert event_name(cls) == hashed_name(cls) == "AccountOverdrawn"
    former = "ledger_service.domain.account:BillingAccount.AccountOverdrawn"
    assert not hasattr(BillingAccount, "AccountOverdrawn")
    state = app.mapper.transcoder.encode({
        "timestamp": datetime(2026, 12, 1, tzinfo=UTC), "chain_hash": "0" * 64,
        "available_micros": -5, "floor_micros": 0})
    for topic in ("ledger.account.AccountOverdrawn", former):
        event = app.mapper.to_domain_event(StoredEvent(uuid4(), 9, topic, state))
        assert type(event) is cls
        assert app.mapper.to_stored_event(event).topic == "ledger.account.AccountOverdrawn"
