"""Pins on the parts of eventsourcing the ledger relies on beyond its documented API.

Each test names the override or assumption it guards (docs/internals.md lists them with the
measured reason for each). If an upgrade of the library changes one of these, the test fails
here, before the behaviour it underpins quietly changes."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from importlib.metadata import version
from uuid import uuid4

from eventsourcing.application import Application, LRUCache, Repository
from eventsourcing.persistence import EventStore, JSONTranscoder, Mapper, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresRecorder

from ledger_service.app.ledger import LedgerApplication
from ledger_service.app.recorder import LedgerRecorder
from ledger_service.projections.decoding import FastMapper


def test_the_library_version_is_the_one_these_pins_were_written_for() -> None:
    # pyproject pins >=9.5.6,<9.6; a new minor version needs this file read again.
    assert version("eventsourcing").startswith("9.5.")


def test_save_hands_keyword_arguments_to_the_recorders_insert_events() -> None:
    """LedgerRecorder.insert_events takes the side rows as `ledger_rows=` through save()."""
    assert "**kwargs" in str(inspect.signature(Application.save))
    assert "kwargs" in inspect.signature(PostgresApplicationRecorder.insert_events).parameters
    assert LedgerRecorder.insert_events is not PostgresApplicationRecorder.insert_events
    assert "**processing_event.saved_kwargs" in inspect.getsource(Application._record)
    assert "self.recorder.insert_events(stored_events, **kwargs)" in inspect.getsource(
        EventStore.put)


def test_snapshots_are_taken_through_the_overridable_take_snapshots() -> None:
    """LedgerApplication._take_snapshots replaces the library's reload-per-snapshot."""
    assert "_take_snapshots" in inspect.getsource(Application.save)
    assert list(inspect.signature(Application._take_snapshots).parameters) == [
        "self", "processing_event"]
    assert LedgerApplication._take_snapshots is not Application._take_snapshots


def test_create_table_runs_every_statement_of_sql_create_statements() -> None:
    """The append-only trigger rides on the recorder's create statements."""
    assert "sql_create_statements" in inspect.getsource(PostgresRecorder._create_table)


def test_the_json_transcoder_keeps_its_transcodings_by_name_and_tags_datetimes() -> None:
    """FastMapper and EventDecoder read `transcoder.names`; SQL reads the timestamp's
    `_data_` (version_at, anchors) and `chain_hash`/`currency` as top-level keys."""
    app = LedgerApplication(env={"MAPPER_TOPIC": "ledger_service.projections.decoding:FastMapper"})
    try:
        transcoder = app.mapper.transcoder
        assert isinstance(transcoder, JSONTranscoder)
        assert isinstance(transcoder.names, dict) and "datetime_iso" in transcoder.names
        moment = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
        state = json.loads(transcoder.encode({"timestamp": moment, "chain_hash": "x"}))
        assert state == {"timestamp": {"_type_": "datetime_iso", "_data_": moment.isoformat()},
                         "chain_hash": "x"}
        assert isinstance(app.mapper, FastMapper) and isinstance(app.mapper, Mapper)
    finally:
        app.close()


def test_a_load_at_a_version_starts_from_the_newest_snapshot_at_or_before_it() -> None:
    """The reader's bounded as_of relies on the snapshot store's `lte`."""
    source = inspect.getsource(Repository._reconstruct_aggregate)
    assert "lte=version" in source and "desc=True" in source and "limit=1" in source


def test_fast_decoding_builds_events_through_their_dict() -> None:
    """decode_fast makes events with object.__new__ and a __dict__: events must keep one."""
    from ledger_service.domain.account import BillingAccount

    opened = next(iter(BillingAccount.open(uuid4(), datetime(2026, 12, 1, tzinfo=UTC),
                                           account_type="prepay").collect_events()))
    assert hasattr(opened, "__dict__") and "chain_hash" in vars(opened)
    assert StoredEvent.__dataclass_fields__.keys() >= {"originator_id", "originator_version",
                                                       "topic", "state"}


def test_the_aggregate_cache_evicts_through_get() -> None:
    """Ledger.evict drops cached accounts with the cache's get(key, evict=True)."""
    cache: LRUCache[str, int] = LRUCache(maxsize=2)
    cache.put("a", 1)
    assert cache.get("a", evict=True) == 1
    try:
        cache.get("a")
    except KeyError:
        pass
    else:
        raise AssertionError("evict=True left the entry in the cache")
