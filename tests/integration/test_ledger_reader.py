"""Reads that load accounts run off the writer, and `as_of` costs a snapshot interval of
events at most, however long the history."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger_service.app.ledger import (
    SNAPSHOT_INTERVAL,
    AccountNotFound,
    Ledger,
    LedgerApplication,
    ledger_env,
)
from ledger_service.messaging import Writer
from ledger_service.reader import PRIMARY, Reader, ReaderConfig, account_as_of, account_view
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


def _sleep_then_pid(ledger: Ledger, seconds: float) -> int:
    time.sleep(seconds)  # a portal user's as_of of a long history, say
    return os.getpid()


def _pid(ledger: Ledger) -> int:
    return os.getpid()


def _spin(ledger: Ledger, seconds: float) -> int:
    """Holds the reader's interpreter (pure Python, the lock never released for I/O)."""
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


def _reader(infra: Infra, processes: int) -> Reader:
    build(infra.database_url, Clock()).app.close()  # the schema, when this test runs alone
    env = ledger_env(eventsourcing_env(infra.database_url, "ledger"))
    return Reader(ReaderConfig({PRIMARY: env}), processes)


@pytest.mark.parametrize("processes", [0, 1])
async def test_a_slow_read_does_not_hold_up_the_writer(infra: Infra, processes: int) -> None:
    writer = Writer()
    reader = _reader(infra, processes)
    try:
        reading = asyncio.ensure_future(reader.call(_sleep_then_pid, 1.0))
        await asyncio.sleep(0.05)
        written = await asyncio.wait_for(writer.call(lambda: "written"), 5)
        assert written == "written" and not reading.done()
        pid = await asyncio.wait_for(reading, 30)
        assert (pid == os.getpid()) == (processes == 0)
    finally:
        writer.close()
        reader.close()


async def test_reads_in_the_reader_process_leave_the_services_interpreter_free(
        infra: Infra) -> None:
    """The reason for the process: a read that computes for a long time (an as-of replay of
    a big account) does not hold this interpreter's lock. A thread of this process keeps
    ticking while the reader spins; measured here as how many 1 ms sleeps fit in the time."""
    reader = _reader(infra, 1)
    try:
        await reader.call(_pid)  # started
        ticks = 0
        stop = False

        def tick() -> None:
            nonlocal ticks
            while not stop:
                time.sleep(0.001)
                ticks += 1

        ticker = threading.Thread(target=tick)
        ticker.start()
        spun = await reader.call(_spin, 1.0)
        stop = True
        ticker.join()
        assert spun > 0
        # Each tick is a 1 ms sleep plus a switch back into this interpreter: with the reader
        # in this process, every switch waits up to the switch interval for the spinning
        # thread; in a process of its own, none does.
        assert ticks > 400, ticks
    finally:
        reader.close()


async def test_a_dead_reader_process_is_replaced(infra: Infra) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    reader = _reader(infra, 1)
    try:
        account_id = Workload(ledger, clock).open("prepay")
        first = await reader.call(_pid)
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.2)
        view = await reader.call(account_view, account_id, None)  # retried in a new process
        assert view.account_id == account_id
        second = await reader.call(_pid)
        assert second != first and second != os.getpid()
        with pytest.raises(AccountNotFound):  # a typed refusal crosses the boundary as it is
            await reader.call(account_view, uuid.uuid4(), None)
    finally:
        reader.close()
        ledger.app.close()


async def test_the_reader_process_leaves_when_the_service_is_gone(infra: Infra,
                                                                 tmp_path: Path) -> None:
    """A service killed with -9 cannot stop its reader: the reader notices and exits."""
    script = tmp_path / "service.py"
    script.write_text(
        "import asyncio, sys\n"
        "from ledger_service.app.ledger import ledger_env\n"
        "from ledger_service.reader import PRIMARY, Reader, ReaderConfig\n"
        "from services.database import eventsourcing_env\n"
        "from tests.integration.test_ledger_reader import _pid\n"
        "async def main():\n"
        "    env = ledger_env(eventsourcing_env(sys.argv[1], 'ledger'))\n"
        "    reader = Reader(ReaderConfig({PRIMARY: env}), 1)\n"
        "    print(await reader.call(_pid), flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    service = subprocess.Popen([sys.executable, str(script), infra.database_url],
                               stdout=subprocess.PIPE, text=True, cwd=Path.cwd(),
                               env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert service.stdout is not None
        reader_pid = int(service.stdout.readline())
        service.kill()
        service.wait(10)
        for _ in range(100):
            if not _alive(reader_pid):
                break
            await asyncio.sleep(0.1)
        assert not _alive(reader_pid)
    finally:
        service.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
