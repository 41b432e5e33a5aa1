"""Reads that load accounts run off the writer, and `as_of` costs a snapshot interval of
events at most, however long the history."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest

from ledger_service.app.ledger import SNAPSHOT_INTERVAL, Ledger, LedgerApplication, ledger_env
from ledger_service.messaging import Writer
from ledger_service.reader import Reader, account_as_of
from services.database import eventsourcing_env
from tests.conftest import Infra
from tests.integration.test_projections_workload import Clock, Workload, build

pytestmark = pytest.mark.integration


class CountingMapper:
    """Counts the stored events (and snapshots) a load turns into objects."""

    def __init__(self, mapper: Any) -> None:
        self._mapper = mapper
        self.decoded = 0

    def to_domain_event(self, stored: Any) -> Any:
        self.decoded += 1
        return self._mapper.to_domain_event(stored)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mapper, name)


def test_as_of_loads_at_most_a_snapshot_interval_of_events(infra: Infra) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    try:
        workload = Workload(ledger, clock)
        account_id = workload.open("prepay")
        workload.grant(0, "purchased", "100.00")
        for _ in range(3 * SNAPSHOT_INTERVAL + 40):
            clock.advance(1)
            workload.use(0, 1)
        events = list(ledger.app.events.get(account_id))
        reader = Ledger(LedgerApplication(env=ledger_env(eventsourcing_env(infra.database_url,
                                                                             "ledger"))))
        try:
            counting = CountingMapper(reader.app.mapper)
            for store in (reader.app.repository.event_store, reader.app.repository.snapshot_store):
                store.mapper = counting  # type: ignore[union-attr,assignment]
            for target in (events[-1], events[len(events) // 2], events[5]):
                counting.decoded = 0
                account = account_as_of(reader, account_id, target.timestamp)
                assert account.version == target.originator_version
                assert counting.decoded <= SNAPSHOT_INTERVAL + 1, counting.decoded  # + snapshot
            between = events[200].timestamp + timedelta(microseconds=1)  # no event then
            assert account_as_of(reader, account_id, between).version == 201
        finally:
            reader.app.close()
    finally:
        ledger.app.close()


async def test_a_slow_read_does_not_hold_up_the_writer(infra: Infra) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    writer = Writer()
    reader = Reader(Ledger(LedgerApplication(env=ledger_env(eventsourcing_env(
        infra.database_url, "ledger")))))
    release = threading.Event()
    try:
        workload = Workload(ledger, clock)
        workload.open("prepay")

        def slow_read() -> str:
            release.wait(30)  # a portal user's as_of of a long history, say
            return "read"

        reading = asyncio.ensure_future(reader.call(slow_read))
        await asyncio.sleep(0.05)
        written = await asyncio.wait_for(writer.call(lambda: "written"), 5)
        assert written == "written" and not reading.done()
        release.set()
        assert await reading == "read"
    finally:
        release.set()
        writer.close()
        reader.close()
        ledger.app.close()
