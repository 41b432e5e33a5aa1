"""The ledger's own metrics: the writer's queue depth by priority, its batch sizes, and the
authorize outcomes; per process by default, summed over processes with
PROMETHEUS_MULTIPROC_DIR (several processes on one port), where a process that stops cleanly
takes its queue depth with it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import get_args

from prometheus_client import REGISTRY

from contracts.ledger import AuthorizeRejection, AuthorizeReply
from ledger_service import metrics
from ledger_service.messaging import Priority, Writer


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def depths() -> dict[str, float]:
    return {p: sample("ledger_writer_queue_depth", priority=p) for p in metrics.WRITER_PRIORITIES}


def test_the_writer_queue_depth_counts_the_jobs_waiting_by_priority() -> None:
    assert [p.name.lower() for p in Priority] == list(metrics.WRITER_PRIORITIES)
    before = depths()
    writer = Writer()
    running, release = threading.Event(), threading.Event()

    def block() -> None:
        running.set()
        release.wait(10)

    async def scenario() -> dict[str, float]:
        blocked = asyncio.ensure_future(writer.call(block, priority=Priority.INTAKE))
        await asyncio.to_thread(running.wait, 10)
        waiting = [asyncio.ensure_future(writer.call(lambda: None, priority=priority))
                   for priority in (Priority.INTAKE, Priority.INTAKE, Priority.AUTHORIZE)]
        await asyncio.sleep(0.05)  # let the calls queue (they do not run: the writer is held)
        during = depths()
        release.set()
        await asyncio.gather(blocked, *waiting)
        return during

    try:
        during = asyncio.run(scenario())
    finally:
        release.set()
        writer.close()
    # The job in hand is not waiting; the three behind it are.
    assert {p: during[p] - before[p] for p in during} == {"authorize": 1, "http": 0, "intake": 2}
    assert depths() == before


def test_every_authorize_outcome_has_its_own_series_from_the_start() -> None:
    outcomes = ["approved", *get_args(AuthorizeRejection)]
    before = {o: sample("ledger_authorize_replies_total", outcome=o) for o in outcomes}
    metrics.count_reply(AuthorizeReply(approved=True))
    for reason in get_args(AuthorizeRejection):
        metrics.count_reply(AuthorizeReply(approved=False, reason=reason))
        metrics.count_reply(AuthorizeReply(approved=False, reason=reason))
    after = {o: sample("ledger_authorize_replies_total", outcome=o) for o in outcomes}
    assert {o: after[o] - before[o] for o in outcomes} == {
        "approved": 1, **{reason: 2 for reason in get_args(AuthorizeRejection)}}


# ------------------------------------------------------------------ several processes

RECORD = """
import sys
from contracts.ledger import AuthorizeReply
from ledger_service import metrics
from services.http.metrics import forget_process
approved, refused, queued, batch = (int(a) for a in sys.argv[1:5])
for _ in range(approved):
    metrics.count_reply(AuthorizeReply(approved=True))
for _ in range(refused):
    metrics.count_reply(AuthorizeReply(approved=False, reason="insufficient_funds"))
for _ in range(queued):
    metrics.WRITER_QUEUE_DEPTHS[2].inc()
metrics.AUTHORIZE_BATCH_SIZE.observe(batch)
if sys.argv[5] == "stop":
    forget_process()
"""
SCRAPE = """
import asyncio
import ledger_service.metrics
from services.http.metrics import scrape
print(asyncio.run(scrape([])).decode())
"""


def python(code: str, *args: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout


def value(text: str, series: str) -> float:
    found = re.search("^" + re.escape(series) + r" (\S+)$", text, re.MULTILINE)
    assert found, f"{series} not in:\n{text}"
    return float(found.group(1))


def test_a_scrape_of_any_process_sums_the_ledger_figures_of_every_process(
        tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    # One process still running with 3 jobs queued (it exits without forgetting, as a live
    # peer's files stay), one that stopped cleanly with 5 queued at the time.
    python(RECORD, "4", "1", "3", "7", "running", env=env)
    python(RECORD, "2", "6", "5", "300", "stop", env=env)
    text = python(SCRAPE, env=env)
    assert value(text, 'ledger_authorize_replies_total{outcome="approved"}') == 6
    assert value(text, 'ledger_authorize_replies_total{outcome="insufficient_funds"}') == 7
    assert value(text, 'ledger_writer_batch_size_count{kind="authorize"}') == 2
    assert value(text, 'ledger_writer_batch_size_sum{kind="authorize"}') == 307
    assert value(text, 'ledger_writer_batch_size_bucket{kind="authorize",le="8.0"}') == 1
    # The stopped process's depth is gone; the running one's counts.
    assert value(text, 'ledger_writer_queue_depth{priority="intake"}') == 3
