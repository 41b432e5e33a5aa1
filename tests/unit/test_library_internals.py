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
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresRecorder,
)

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


def test_a_cached_account_is_what_the_repository_gets_and_a_miss_reconstructs() -> None:
    """Ledger.load_many builds a batch's uncached accounts itself (their newest snapshot and
    the events after it, from the tables the recorders name) and puts them in the repository's
    cache; `load` (Repository.get) must then return that object as is: no store read, no
    fast-forward, no deep copy (the ledger's env turns both off), and only a miss reaches
    `_reconstruct_aggregate`, which reads the newest snapshot and the events after it."""
    source = inspect.getsource(Repository.get)
    assert "self.cache.get(aggregate_id)" in source and "except KeyError" in source
    assert "self._reconstruct_aggregate(" in source
    reconstruct = inspect.getsource(Repository._reconstruct_aggregate)
    assert "desc=True" in reconstruct and "gt=gt" in reconstruct
    app = LedgerApplication(env={
        "AGGREGATE_CACHE_MAXSIZE": "10", "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n", "IS_SNAPSHOTTING_ENABLED": "y"})
    try:
        marker = object()
        account_id = uuid4()
        app.repository.cache.put(account_id, marker)  # type: ignore[union-attr]
        assert app.repository.get(account_id) is marker
        assert app.snapshots is not None
        assert app.snapshots.mapper is not None and app.snapshots.recorder is not None
    finally:
        app.close()
    # the table each recorder writes, which load_many's query reads
    assert "self.events_table_name = events_table_name" in inspect.getsource(
        PostgresAggregateRecorder.__init__)
