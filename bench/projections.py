"""projections: catch-up, rebuild and verify over a long log; the portal's reads over HTTP.

Targets (issue 4): projection catch-up and rebuild at least 100,000 events/s; GET /balance for
a random account at least 5,000 requests/s with p99 under 10 ms; GET /entries (first page of
100) at least 2,000 requests/s; `ledgerctl verify` over 1,000,000 events: the time.

1. A fresh database; 1,000 prepay accounts, then usage written in-process through the
   domain and the Ledger's commit path (one stored event per account per round, as intake
   writes them), ``lines`` lines per event: 1,000,000 events (quick: 100,000).
2. Catch-up of all four projections from position 0 in one runner (the service's code,
   batches growing from 500 to 10,000 notifications while far behind), then each projection
   rebuilt on its own into its shadow table and swapped in, then `verify` over the log.
3. The ledger service as BENCH_LEDGER_PROCESSES processes (default: one per core) sharing
   one port (LEDGER_HTTP_REUSE_PORT), once the publisher has published the whole log (the
   projection runners are idle: everything is projected). wrk (a C client, one thread, 32
   connections; httpx when wrk is not installed) asks for random accounts' first page of
   entries, then their balance, for a fixed time each. Rates count 200 answers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import psycopg

from bench import infra
from bench.accounts import SMS_UNIT_PRICE_MICROS, open_prepay_accounts
from bench.options import RunOptions
from bench.stats import LatencySummary, rate_per_s
from ledger_service.app.ledger import Ledger, UnitOfWork
from ledger_service.domain.values import UsageLine
from ledger_service.projections.builders import PROJECTION_NAMES
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.runner import (
    ProjectionRunner,
    account_loader,
    connector,
    rebuild,
)
from ledger_service.projections.verify import verify
from services.database import conninfo
from services.http import DEVELOPMENT_JWT_SECRET, mint_token

NAME = "projections"
# A database and a nats-server store of its own, so it can run beside the other benchmarks.
DATABASE_NAME = "billing_bench_projections"
RUN_DIR = infra.RUN_DIR / "projections"
ACCOUNTS = 1_000
EVENTS_FULL = 1_000_000
EVENTS_QUICK = 100_000
ACCOUNTS_PER_COMMIT = 500  # one event each: keeps one INSERT of events well under 2 MB
HTTP_CONNECTIONS = 32
# Ledger processes sharing the HTTP port (one per core), as a deployment scales its reads.
SERVICE_PROCESSES = int(os.environ.get("BENCH_LEDGER_PROCESSES", os.cpu_count() or 1))
HTTP_SECONDS_FULL = 20.0
HTTP_SECONDS_QUICK = 5.0
TARGET_EVENTS_PER_S = 100_000
TARGET_BALANCE_PER_S = 5_000
TARGET_BALANCE_P99_MS = 10.0
TARGET_ENTRIES_PER_S = 2_000


def run(options: RunOptions) -> dict[str, Any]:
    events_wanted = EVENTS_QUICK if options.quick else EVENTS_FULL
    url = infra.recreate_database(DATABASE_NAME)
    ledger = infra.open_ledger(url)
    try:
        accounts = open_prepay_accounts(ledger, ACCOUNTS, 10**12)
        result: dict[str, Any] = {"accounts": ACCOUNTS, "write": write_log(ledger, accounts,
                                                                           events_wanted)}
        result["catch_up"] = catch_up(ledger, url)
        result["rebuild"] = {name: rebuild_one(ledger, url, name) for name in PROJECTION_NAMES}
        result["verify"] = verify_all(ledger, url)
    finally:
        ledger.app.close()
    seconds = HTTP_SECONDS_QUICK if options.quick else HTTP_SECONDS_FULL
    with infra.own_nats(RUN_DIR) as nats_server, ledger_processes(url, nats_server.url) as base_url:
        result["publisher_catch_up_s"] = wait_for_publisher(url)
        result["http"] = {"ledger_processes": SERVICE_PROCESSES, "connections": HTTP_CONNECTIONS,
                          "client": "wrk" if shutil.which("wrk") else "httpx"}
        result["get_entries"] = http_load(
            base_url, [f"/v1/accounts/{a}/entries?limit=100" for a in accounts], seconds)
        result["get_balance"] = http_load(
            base_url, [f"/v1/accounts/{a}/balance" for a in accounts], seconds)
    result["target_met"] = {
        "catch_up": result["catch_up"]["events_per_s"] >= TARGET_EVENTS_PER_S,
        "rebuild": all(r["events_per_s"] >= TARGET_EVENTS_PER_S
                       for r in result["rebuild"].values()),
        "get_entries": result["get_entries"]["requests_per_s"] >= TARGET_ENTRIES_PER_S,
        "get_balance": result["get_balance"]["requests_per_s"] >= TARGET_BALANCE_PER_S
        and result["get_balance"]["latency"]["ms_p99"] <= TARGET_BALANCE_P99_MS,
    }
    return result


def write_log(ledger: Ledger, accounts: list[UUID], events_wanted: int) -> dict[str, Any]:
    started = time.perf_counter()
    written = 0
    round_ = 0
    while written < events_wanted:
        for start in range(0, len(accounts), ACCOUNTS_PER_COMMIT):
            chunk = accounts[start:start + ACCOUNTS_PER_COMMIT]
            def use(work: UnitOfWork, ids: list[UUID] = chunk, r: int = round_) -> None:
                _use(ledger, work, ids, r)

            ledger.run(use)
            written += len(chunk)
        round_ += 1
    elapsed = time.perf_counter() - started
    return {"events": written, "elapsed_s": round(elapsed, 1),
            "events_per_s": round(rate_per_s(written, elapsed))}


def _use(ledger: Ledger, work: UnitOfWork, account_ids: list[UUID], round_: int) -> None:
    now = datetime.now(UTC)
    for account_id in account_ids:
        account = work.touch(ledger.load(account_id))
        account.record_usage([UsageLine(f"b-{account_id}-{round_}", "sms", 1,
                                        SMS_UNIT_PRICE_MICROS, "submitted", now)], now)


def timing(events: int, elapsed_s: float, cpu_s: float) -> dict[str, Any]:
    """Wall-clock rate, and this process's CPU per event: the machine has two cores and other
    benchmarks may run beside this one, so the CPU figure tells our cost from their noise
    (the database server's share is not in it)."""
    return {"events": events, "elapsed_s": round(elapsed_s, 2),
            "events_per_s": round(rate_per_s(events, elapsed_s)),
            "cpu_s": round(cpu_s, 2), "cpu_us_per_event": round(cpu_s / max(events, 1) * 1e6, 1)}


def catch_up(ledger: Ledger, url: str) -> dict[str, Any]:
    runner = ProjectionRunner(connector(url), EventDecoder(ledger.app.mapper),
                              account_loader(ledger.app))
    with infra.collector_as_in_the_services():
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            events = runner.catch_up()
        finally:
            runner.close()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"  catch-up of all four projections: {events:,} events in {elapsed:.1f} s"
          f" ({cpu / max(events, 1) * 1e6:.1f} us CPU per event)")
    return timing(events, elapsed, cpu)


def rebuild_one(ledger: Ledger, url: str, name: str) -> dict[str, Any]:
    with infra.collector_as_in_the_services():
        started, cpu_started = time.perf_counter(), time.process_time()
        result = rebuild(connector(url), EventDecoder(ledger.app.mapper),
                         account_loader(ledger.app), name)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"  rebuild {name}: {result.events:,} events in {elapsed:.1f} s"
          f" ({cpu / max(result.events, 1) * 1e6:.1f} us CPU per event)")
    return timing(result.events, elapsed, cpu)


def verify_all(ledger: Ledger, url: str) -> dict[str, Any]:
    with infra.collector_as_in_the_services(), \
            psycopg.connect(conninfo(url, options="-c search_path=ledger")) as conn:
        cpu_started = time.process_time()
        report = verify(conn, EventDecoder(ledger.app.mapper))
        cpu = time.process_time() - cpu_started
    print(f"  verify: {report.events:,} events in {report.elapsed_s:.1f} s, ok={report.ok}"
          f" ({cpu / max(report.events, 1) * 1e6:.1f} us CPU per event)")
    return {**timing(report.events, report.elapsed_s, cpu), "ok": report.ok}


def wait_for_publisher(url: str, timeout_s: float = 600) -> float:
    """The service publishes ledger.v1.events.* for the whole log on its first start; measure
    the reads once that is done, not against it."""
    started = time.perf_counter()
    with psycopg.connect(conninfo(url, options="-c search_path=ledger"), autocommit=True) as conn:
        head = conn.execute("SELECT max(notification_id) FROM ledger_events").fetchone()
        while time.perf_counter() - started < timeout_s:
            row = conn.execute("SELECT notification_id FROM publisher_position").fetchone()
            if row and head and row[0] >= head[0]:
                break
            time.sleep(0.5)
    waited = time.perf_counter() - started
    print(f"  the service's publisher caught up with the log in {waited:.0f} s")
    return round(waited, 1)


@contextlib.contextmanager
def ledger_processes(url: str, nats_url: str) -> Iterator[str]:
    """SERVICE_PROCESSES ledger processes sharing one port (LEDGER_HTTP_REUSE_PORT), as a
    deployment scales reads; yields the port's base URL."""
    port = infra.free_port()
    processes = [infra.LedgerProcess(url, nats_url, port=port, name=f"ledger_service-{i}",
                                     extra_env={"LEDGER_HTTP_REUSE_PORT": "true"})
                 for i in range(SERVICE_PROCESSES)]
    try:
        for process in processes:
            process.start()
        yield processes[0].url
    finally:
        for process in processes:
            process.stop()


def http_load(base_url: str, paths: list[str], seconds: float) -> dict[str, Any]:
    """wrk when installed (a C client: it leaves the cores to the service), else httpx."""
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="bench", scopes=["operator"])
    if shutil.which("wrk") is None:
        print("  (wrk not installed: httpx generates the load, and takes a core from the service)")
        return asyncio.run(httpx_load(base_url, paths, seconds, token))
    return wrk_load(base_url, paths, seconds, token)


_WRK_LINE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$")
_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_load(base_url: str, paths: list[str], seconds: float, token: str) -> dict[str, Any]:
    script = RUN_DIR / "wrk-paths.lua"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
        "request = function()\n"
        "  return wrk.format('GET', paths[math.random(#paths)])\n"
        "end\n")
    warm_up = ["wrk", "-t1", f"-c{HTTP_CONNECTIONS}", "-d2s", "-H", f"Authorization: Bearer {token}",
               "-s", str(script), base_url]
    subprocess.run(warm_up, check=True, capture_output=True)  # connections, prepared plans
    command = ["wrk", "-t1", f"-c{HTTP_CONNECTIONS}", f"-d{seconds:.0f}s", "--latency",
               "-H", f"Authorization: Bearer {token}", "-s", str(script), base_url]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    latency = {f"ms_p{m.group(1)}": round(float(m.group(2)) * _WRK_UNITS[m.group(3)], 3)
               for line in output.splitlines() if (m := _WRK_LINE.match(line))}
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    failures = int(non_2xx.group(1)) if non_2xx else 0
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    print(f"  GET {paths[0].split('/')[-1]}: {rate:,.0f}/s, p50 {latency.get('ms_p50')} ms,"
          f" p99 {latency.get('ms_p99')} ms, failures {failures}")
    return {"requests": requests - failures, "failures": failures,
            "socket_errors": errors.group(1) if errors else None, "elapsed_s": seconds,
            "requests_per_s": round(rate * (requests - failures) / max(requests, 1)),
            "latency": latency}


async def httpx_load(base_url: str, paths: list[str], seconds: float,
                     token: str) -> dict[str, Any]:
    headers = {"Authorization": "Bearer " + token}
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=HTTP_CONNECTIONS,
                          max_keepalive_connections=HTTP_CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=10) as client:
        for path in paths[:50]:  # warm up: connections, prepared statements, caches
            await client.get(path)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            rng = random.Random()
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get(rng.choice(paths))
                except httpx.HTTPError:
                    failures += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(HTTP_CONNECTIONS)))
        elapsed = time.perf_counter() - started
    summary = LatencySummary.of_seconds(latencies)
    print(f"  GET {paths[0].split('/')[-1]}: {rate_per_s(len(latencies), elapsed):,.0f}/s,"
          f" {summary.line()}, failures {failures}")
    return {"requests": len(latencies), "failures": failures, "elapsed_s": round(elapsed, 1),
            "requests_per_s": round(rate_per_s(len(latencies), elapsed)),
            "latency": summary.as_dict()}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(RunOptions(quick="--quick" in sys.argv)), indent=2))
