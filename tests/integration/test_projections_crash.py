"""A crash mid-catch-up loses nothing and repeats nothing: rows and positions commit together.

Two crashes: an exception in the middle of a batch (after some tables were written, before
the commit), and a `ledgerctl catch-up` process killed with SIGKILL while it works.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from ledger_service.app.ledger import Ledger
from ledger_service.projections import builders
from ledger_service.projections.runner import ProjectionRunner
from services.database import conninfo
from tests.conftest import Infra
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    assert_projections_match,
    build,
    runner_for,
    scratch_database,
)

pytestmark = pytest.mark.integration


def positions(database_url: str) -> dict[str, int]:
    with psycopg.connect(conninfo(database_url, options="-c search_path=ledger")) as conn:
        return dict(conn.execute("SELECT name, position FROM projection_positions"
                                 " WHERE name NOT LIKE '%%rebuild'").fetchall())


@dataclass
class Worked:
    ledger: Ledger
    runner: ProjectionRunner
    workload: Workload


@pytest.fixture
def worked(infra: Infra) -> Iterator[Worked]:
    """Projections caught up with whatever earlier tests left, then every kind of event
    written and not yet projected; a runner of four notifications a batch."""
    clock = Clock()
    ledger = build(infra.database_url, clock)
    runner = runner_for(ledger, infra.database_url, batch_size=4)
    try:
        runner.catch_up()
        workload = Workload(ledger, clock)
        workload.every_kind()
        yield Worked(ledger, runner, workload)
    finally:
        runner.close()
        ledger.app.close()


def test_a_failure_mid_batch_rolls_back_rows_and_positions_together(
        infra: Infra, worked: Worked, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, runner, workload = worked.ledger, worked.runner, worked.workload
    before = positions(infra.database_url)
    runner.step()  # one good batch
    after_one = positions(infra.database_url)
    assert all(after_one[n] > before[n] for n in before)

    real_flush = builders.Usage.flush
    calls = {"n": 0}

    def crashing_flush(self: builders.Usage, cur: Any, tables: Any) -> None:
        calls["n"] += 1
        real_flush(self, cur, tables)  # the usage rows are written...
        if calls["n"] == 2:
            raise RuntimeError("power cut")  # ...and the batch dies before its commit

    monkeypatch.setattr(builders.Usage, "flush", crashing_flush)
    runner.step()
    with pytest.raises(RuntimeError, match="power cut"):
        runner.step()
    committed = positions(infra.database_url)
    assert committed["balances"] == committed["statement"] == committed["usage"]
    assert committed["usage"] > after_one["usage"]  # the batch before the crash stuck

    monkeypatch.setattr(builders.Usage, "flush", real_flush)
    runner.catch_up()  # the restart resumes from the committed position
    assert_projections_match(ledger, infra.database_url, workload.accounts)


def test_a_failure_while_statement_rows_stream_leaves_no_row_of_the_batch(
        infra: Infra, worked: Worked, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, runner, workload = worked.ledger, worked.runner, worked.workload
    before = positions(infra.database_url)
    real_apply = builders.Holds.apply
    calls = {"n": 0}

    def crashing_apply(self: builders.Holds, event: Any, position: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the statement rows of this batch's first events are sent
            raise RuntimeError("power cut")
        real_apply(self, event, position)

    monkeypatch.setattr(builders.Holds, "apply", crashing_apply)
    with pytest.raises(RuntimeError, match="power cut"):
        runner.step()
    assert positions(infra.database_url) == before

    monkeypatch.setattr(builders.Holds, "apply", real_apply)
    runner.catch_up()
    assert_projections_match(ledger, infra.database_url, workload.accounts)


def test_a_catch_up_killed_with_sigkill_resumes_exactly_where_it_committed(infra: Infra) -> None:
    with scratch_database(infra, "crash") as database_url:
        clock = Clock()
        ledger = build(database_url, clock)
        try:
            workload = Workload(ledger, clock)
            for _ in range(20):
                workload.open("prepay")
                workload.grant(len(workload.accounts) - 1, "purchased", "100.00")
            for round_ in range(60):
                for index in range(len(workload.accounts)):
                    workload.use(index, 1 + round_ % 3)
            head = max(positions(database_url).values())
            assert head == 0
            env = {**os.environ, "DATABASE_URL": database_url}
            command = [sys.executable, "-m", "ledger_service.cli", "catch-up", "--batch-size", "3"]
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while min(positions(database_url).values()) < 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            halfway = positions(database_url)
            assert min(halfway.values()) > 0, halfway
            with psycopg.connect(conninfo(database_url)) as conn:
                log_head = conn.execute("SELECT max(notification_id) FROM ledger.ledger_events"
                                        ).fetchone()
            assert log_head is not None and max(halfway.values()) < log_head[0], \
                "the catch-up finished before it was killed: make the log longer"

            finished = subprocess.run([*command[:-2], "--batch-size", "500"], env=env,
                                      capture_output=True, text=True, timeout=120)
            assert finished.returncode == 0, finished.stderr
            assert set(positions(database_url).values()) == {log_head[0]}
            assert_projections_match(ledger, database_url, workload.accounts)
            verified = subprocess.run([sys.executable, "-m", "ledger_service.cli", "verify"],
                                      env=env, capture_output=True, text=True, timeout=120)
            assert verified.returncode == 0, verified.stdout + verified.stderr
        finally:
            ledger.app.close()
