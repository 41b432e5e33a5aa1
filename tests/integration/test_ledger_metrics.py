"""The ledger's metrics with two service processes on one port (LEDGER_HTTP_REUSE_PORT and
PROMETHEUS_MULTIPROC_DIR, as a deployment scales out on one machine): authorize outcomes,
the writer's batch sizes and queue depth are counted in whichever process did the work, and
every scrape, whichever process answers it, shows the totals of both."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest

from ledger_service.partitions import lease_counts
from services.embedded import free_port
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_projections_workload import scratch_database

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="metrics-test",
                                                    scopes=["operator"])}
SCRAPES = 20  # all on one process of two: a chance of 2 in a million


@dataclass(frozen=True)
class Ledgers:
    url: str  # the port both processes serve
    funded: list[str]  # accounts with 10.00
    empty: list[str]  # accounts with nothing


@pytest.fixture(scope="module")
def ledgers(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledgers]:
    logs = tmp_path_factory.mktemp("ledger-metrics")
    for index in range(2):
        (logs / str(index)).mkdir()
    shared = tmp_path_factory.mktemp("prometheus-multiproc")
    port = free_port()
    # A database of its own: the holds placed here must not fall due in other tests' sweeps.
    with scratch_database(infra, "metrics") as database_url:
        env = infra.service_env(LEDGER_HTTP_REUSE_PORT="true", DATABASE_URL=database_url,
                                PROMETHEUS_MULTIPROC_DIR=str(shared))
        first, second = (ServiceProcess("ledger_service", env, port=port) for _ in range(2))
        try:
            # One log folder each: they share a port, so a log file name.
            first.start(logs / "0").wait_ready()
            # The accounts are written while one process runs, and each is asked about once:
            # a process answers from the accounts it holds in memory, which a write by the
            # other process leaves behind (a refusal from a stale balance; reported with this
            # change).
            funded = [open_account(first.url, "10.00") for _ in range(20)]
            empty = [open_account(first.url, "0") for _ in range(3)]
            second.start(logs / "1").wait_ready()
            # /readyz on the shared port may be answered by the first process: wait for the
            # second's own word that it serves.
            wait_for(lambda: '"service started"' in second.logs(), "a second listener")
            # And the partitions shared out: an authorization for a partition between owners
            # waits for the handover (a request once timed out here while it happened).
            wait_for(lambda: lease_counts(database_url) == [8, 8], "the partitions shared out")
            yield Ledgers(first.url, funded, empty)
        finally:
            for process in (first, second):
                if process.process is not None:
                    assert process.stop() == 0, process.logs()


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        time.sleep(0.1)


def open_account(url: str, credit: str) -> str:
    account_id = str(uuid.uuid4())
    opened = httpx.post(f"{url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account_id, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    if credit != "0":
        granted = httpx.post(f"{url}/v1/accounts/{account_id}/credits", headers=OPERATOR,
                             json={"kind": "purchased", "amount": credit, "reason": "test"})
        assert granted.status_code == 201, granted.text
    return account_id


async def authorize(nats_url: str, payloads: list[bytes]) -> list[dict[str, object]]:
    nc = await nats.connect(nats_url)
    try:
        return [json.loads((await nc.request("ledger.v1.authorize", p, timeout=10)).data)
                for p in payloads]
    finally:
        await nc.close()


def request(account_id: str) -> bytes:
    return json.dumps({"request_id": f"m-{uuid.uuid4()}", "account_id": account_id,
                       "product": "sms", "quantity": 1}).encode()


def value(text: str, series: str) -> float:
    found = re.search("^" + re.escape(series) + r" (\S+)$", text, re.MULTILINE)
    assert found, f"{series} not in /metrics:\n" + "\n".join(
        line for line in text.splitlines() if series.split("{")[0] in line)
    return float(found.group(1))


def test_every_scrape_of_the_shared_port_shows_the_work_of_both_processes(
        ledgers: Ledgers, infra: Infra) -> None:
    payloads = ([request(a) for a in ledgers.funded] + [request(a) for a in ledgers.empty]
                + [request(str(uuid.uuid4())) for _ in range(2)] + [b"{nope", b"[]"])
    replies = asyncio.run(authorize(infra.nats_url, payloads))
    outcomes = [r["reason"] if not r["approved"] else "approved" for r in replies]
    assert outcomes == (["approved"] * 20 + ["insufficient_funds"] * 3
                        + ["account_not_found"] * 2 + ["invalid_request"] * 2), replies

    answered_by: set[str] = set()
    for _ in range(SCRAPES):
        # A new connection each time: the kernel spreads them over the port's processes.
        text = httpx.get(f"{ledgers.url}/metrics", headers={"Connection": "close"}).text
        assert value(text, 'ledger_authorize_replies_total{outcome="approved"}') == 20
        assert value(text, 'ledger_authorize_replies_total{outcome="insufficient_funds"}') == 3
        assert value(text, 'ledger_authorize_replies_total{outcome="account_not_found"}') == 2
        assert value(text, 'ledger_authorize_replies_total{outcome="invalid_request"}') == 2
        assert value(text, 'ledger_authorize_replies_total{outcome="credit_limit_exceeded"}') == 0
        # Only requests that decoded reach the writer: 25, in batches of any size.
        assert value(text, 'ledger_writer_batch_size_sum{kind="authorize"}') == 25
        for priority in ("authorize", "http", "intake"):
            assert value(text, f'ledger_writer_queue_depth{{priority="{priority}"}}') >= 0
        # The pid of each process that has answered a scrape (a per-process gauge).
        answered_by |= set(re.findall(
            r'^metrics_scrape_collector_failed\{collector="ledger-followers",pid="(\d+)"\}',
            text, re.MULTILINE))
    assert len(answered_by) == 2, "one process answered every scrape: nothing was summed"


def test_without_a_shared_directory_reuse_port_warns_that_counts_are_per_process(
        infra: Infra, tmp_path: Path) -> None:
    env = infra.service_env(LEDGER_HTTP_REUSE_PORT="true")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = ServiceProcess("ledger_service", env).start(tmp_path)
    try:
        process.wait_ready()
    finally:
        assert process.stop() == 0, process.logs()
    assert "HTTP_REUSE_PORT without PROMETHEUS_MULTIPROC_DIR" in process.logs()
