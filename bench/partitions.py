"""partitions: usage intake with 1 and 2 ledger processes sharing the account partitions.

    .venv/bin/python -m bench.partitions [--events 30000] [--accounts 200]

For each case a fresh database (BENCH_PARTITIONS_DATABASE, default billing_partition_bench)
with the accounts opened in-process, our own nats-server, and N ledger processes
(LEDGER_PARTITIONS=16) waited for until the leases are shared out. Then the events are
published as fast as nats-py can, and the clock stops when every event has its idempotency
key in the database (committed). CPU is read from /proc for every process involved: the
ledger processes and their follower processes, the PostgreSQL backends, nats-server and this
load generator; "us per event" divides the sum by the events.

Cases:
- `1 process, usage.v1.recorded`: today's path (a lone owner applies everything, no hop);
- `2 processes, usage.v1.recorded`: the shared durable; a message of the other process's
  partitions is forwarded to usage.v1.part.<p>.<account_id> (one more JetStream hop);
- `2 processes, usage.v1.part.<p>.<account_id>`: a publisher that knows the partitioning
  (contracts.partitioning) publishes straight to the owner's subject: no hop.

Every case checks the balances (credit - events x unit price) before it counts.

    .venv/bin/python -m bench.partitions --authorize [--rate 1000] [--seconds 10]

Authorizations instead: 1,000 accounts, then for 1 and 2 ledger processes an open loop of
`--rate` requests a second on `ledger.v1.authorize` (with 2 processes, the queue group hands
about half of them to a process that does not own the account, which forwards them to the
owner's `ledger.v1.authorize.part.<p>`), latency from each request's scheduled instant (as
bench/authorize.py), CPU per authorization across every process, and beside them, in the same
run, the raw PostgreSQL commit p99 and the raw NATS echo p99 (issue 12's aim: authorize's
p99 within 2x their sum).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import nats
import psycopg
import uvloop

from bench import infra
from bench.accounts import SMS_UNIT_PRICE_MICROS, open_prepay_accounts
from bench.authorize import CommitProbe, RequestFactory, Settings, closed_loop, echo_baseline, open_loop
from bench.cpu import CpuMeter
from contracts.partitioning import partition_of
from contracts.subjects import USAGE_RECORDED, usage_partition_subject
from ledger_service.partitions import lease_counts
from services.database import conninfo
from services.embedded import NatsProcess

DATABASE = os.environ.get("BENCH_PARTITIONS_DATABASE", "billing_partition_bench")
PARTITIONS = 16
CREDIT_MICROS = 1_000_000_000
DRAIN_TIMEOUT_S = 600.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(p) for p in text)
    return found


def owned_counts(url: str) -> list[int]:
    try:
        return lease_counts(url)
    except psycopg.OperationalError:  # a shared machine's PostgreSQL out of connections
        return []


def applied(url: str) -> int:
    try:
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM ledger.idempotency_keys"
                               " WHERE scope = 'usage'").fetchone()
    except psycopg.OperationalError:
        return 0
    return int(row[0]) if row else 0


@contextlib.contextmanager
def ledgers(url: str, nats_url: str, count: int) -> Iterator[list[infra.LedgerProcess]]:
    processes = []
    try:
        for _ in range(count):
            processes.append(infra.LedgerProcess(url, nats_url, extra_env={
                "LEDGER_PARTITIONS": str(PARTITIONS)}).start())
        deadline = time.monotonic() + 60
        share = -(-PARTITIONS // count)
        while owned_counts(url) != sorted([share] * (PARTITIONS // share)
                                          + ([PARTITIONS % share] if PARTITIONS % share else [])):
            if time.monotonic() > deadline:
                raise TimeoutError(f"leases not shared out: {owned_counts(url)}")
            time.sleep(0.2)
        yield processes
    finally:
        for process in processes:
            process.stop()


async def publish(nats_url: str, messages: Sequence[tuple[str, str, bytes]]) -> float:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        for subject, msg_id, payload in messages:
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
        await js.publish_async_completed()
        return time.perf_counter() - started
    finally:
        await nc.close()


def fresh_accounts(count: int, credit_micros: int) -> tuple[str, list[UUID]]:
    """A new database with `count` prepaid accounts: its URL and the accounts."""
    url = infra.recreate_database(DATABASE)
    ledger = infra.open_ledger(url)
    try:
        return url, open_prepay_accounts(ledger, count, credit_micros)
    finally:
        ledger.app.close()


def cpu_meter(url: str, nats_server: NatsProcess, running: list[infra.LedgerProcess]) -> CpuMeter:
    """CPU by group: the ledger processes (and their children), their database backends,
    the NATS server and this load generator."""
    return CpuMeter({
        "ledger": lambda: [p for s in running for p in (s.pid, *children(s.pid))],
        "postgres_backends": lambda: infra.backend_pids(url, DATABASE),
        "nats_server": lambda: [nats_server.process.pid],
        "bench_client": lambda: [os.getpid()],
    })


def run_case(name: str, processes: int, subject_of: Callable[[UUID], str], events: int,
             accounts: int) -> dict[str, Any]:
    url, account_ids = fresh_accounts(accounts, CREDIT_MICROS)
    messages = []
    for index in range(events):
        account_id = account_ids[index % accounts]
        event_id = f"part-{index:07d}"
        messages.append((subject_of(account_id), event_id, msgspec.json.encode({
            "event_id": event_id, "account_id": account_id, "product": "sms", "quantity": 1,
            "occurred_at": "2026-12-04T12:00:00Z", "status": "submitted"})))
    with infra.own_nats(infra.RUN_DIR / "partitions") as nats_server, \
            ledgers(url, nats_server.url, processes) as running:
        meter = cpu_meter(url, nats_server, running)
        meter.start()
        started = time.perf_counter()
        publish_s = asyncio.run(publish(nats_server.url, messages))
        deadline = started + DRAIN_TIMEOUT_S
        while applied(url) < events:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{name}: {applied(url)} of {events} applied")
            time.sleep(0.05)
        elapsed_s = time.perf_counter() - started
        cpu = meter.stop()
    verify(url, account_ids, events)
    total_cpu_s = sum(cpu.cpu_s_by_group.values())
    result = {
        "case": name, "processes": processes, "events": events, "accounts": accounts,
        "elapsed_s": round(elapsed_s, 2), "publish_s": round(publish_s, 2),
        "events_per_s": round(events / elapsed_s),
        "cpu_us_per_event": round(total_cpu_s / events * 1e6, 1),
        "ledger_cpu_us_per_event": round(cpu.cpu_s_by_group["ledger"] / events * 1e6, 1),
        "machine_cpu_us_per_event": round(cpu.machine_busy_s / events * 1e6, 1),
        "cpu": cpu.as_dict(),
    }
    print(f"  {name}: {events:,} events in {elapsed_s:.2f} s = {result['events_per_s']:,}/s;"
          f" {result['cpu_us_per_event']} us CPU per event (ledger"
          f" {result['ledger_cpu_us_per_event']}); {cpu.line()}", flush=True)
    return result


def verify(url: str, account_ids: Sequence[UUID], events: int) -> None:
    per_account = events // len(account_ids)
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        keys = conn.execute("SELECT count(*) FROM ledger.idempotency_keys WHERE scope = 'usage'"
                            ).fetchone()
    assert keys is not None and keys[0] == events, keys
    ledger = infra.open_ledger(url)
    try:
        for account_id in account_ids[:20]:
            balance = ledger.load(account_id).balance_micros
            assert balance == CREDIT_MICROS - per_account * SMS_UNIT_PRICE_MICROS, account_id
    finally:
        ledger.app.close()


AUTHORIZE_CREDIT_MICROS = 10**10
AUTHORIZE_ACCOUNTS = 1_000
WARM_UP_CONCURRENCY = 50


def run_authorize_case(processes: int, rate: int, seconds: float) -> dict[str, Any]:
    url, account_ids = fresh_accounts(AUTHORIZE_ACCOUNTS, AUTHORIZE_CREDIT_MICROS)
    result: dict[str, Any] = {"case": f"{processes} process(es), ledger.v1.authorize",
                              "processes": processes, "accounts": AUTHORIZE_ACCOUNTS}
    with infra.own_nats(infra.RUN_DIR / "partitions") as nats_server:
        settings = Settings(accounts=AUTHORIZE_ACCOUNTS, open_loop_rate_per_s=rate,
                            open_loop_duration_s=seconds, concurrency_levels=(),
                            level_duration_s=0)
        result["baseline_postgres_commit_alone"] = CommitProbe(url).run_for(seconds)
        result["baseline_nats_echo"] = echo_baseline(nats_server.url, account_ids, settings)
        with ledgers(url, nats_server.url, processes) as running:
            meter = cpu_meter(url, nats_server, running)
            result["open_loop"] = uvloop.run(_authorize(nats_server.url, account_ids, rate,
                                                        seconds, meter, CommitProbe(url)))
    loop = result["open_loop"]
    sent = int(rate * seconds)
    if loop["replies"].get("approved") != sent:
        raise RuntimeError(f"not every authorization approved: {loop['replies']}")
    raw_p99 = (result["baseline_postgres_commit_alone"]["ms_p99"]
               + result["baseline_nats_echo"]["latency"]["ms_p99"])
    result["raw_p99_sum_ms"] = round(raw_p99, 2)
    result["p99_over_raw_sum"] = round(loop["latency"]["ms_p99"] / raw_p99, 2)
    cpu = loop["cpu"]
    result["cpu_us_per_authorization"] = round(
        1e6 * sum(cpu["cpu_s_by_group"].values()) / sent, 1)
    result["ledger_cpu_us_per_authorization"] = round(
        1e6 * cpu["cpu_s_by_group"]["ledger"] / sent, 1)
    latency = loop["latency"]
    print(f"  {result['case']}: {rate:,}/s for {seconds:.0f} s: p50 {latency['ms_p50']} ms,"
          f" p99 {latency['ms_p99']} ms ({result['p99_over_raw_sum']}x the raw"
          f" {result['raw_p99_sum_ms']} ms); {result['cpu_us_per_authorization']} us CPU per"
          f" authorization (ledger {result['ledger_cpu_us_per_authorization']});"
          f" {cpu['line']}", flush=True)
    return result


async def _authorize(nats_url: str, account_ids: Sequence[UUID], rate: int, seconds: float,
                     meter: CpuMeter, probe: CommitProbe) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        requests = RequestFactory(account_ids)
        await closed_loop(nc, requests.for_each_account(), WARM_UP_CONCURRENCY)
        meter.start()
        with probe.running():
            result = await open_loop(nc, requests, rate, seconds)
        cpu = meter.stop()
        result["cpu"] = {**cpu.as_dict(), "cpu_s_by_group": cpu.cpu_s_by_group,
                         "line": cpu.line()}
        result["postgres_commit_probe_during"] = probe.summary()
        return result
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitions", description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--out", type=Path, default=infra.RESULTS_DIR / "partitions.json")
    parser.add_argument("--only", type=int, choices=(0, 1, 2), action="append",
                        help="run only these cases (by index)")
    parser.add_argument("--authorize", action="store_true",
                        help="authorizations at --rate with 1 and 2 processes instead of usage")
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.authorize:
        out = args.out.with_name("partitions-authorize.json") \
            if args.out.name == "partitions.json" else args.out
        found = [run_authorize_case(processes, args.rate, args.seconds) for processes in (1, 2)]
        infra.save_json(out, found)
        print(f"wrote {out}")
        return 0
    cases = [
        ("1 process, usage.v1.recorded", 1, lambda _: USAGE_RECORDED),
        ("2 processes, usage.v1.recorded (forwarded)", 2, lambda _: USAGE_RECORDED),
        ("2 processes, usage.v1.part.<p>.<account>", 2,
         lambda a: usage_partition_subject(partition_of(a, PARTITIONS), a)),
    ]
    results = [run_case(name, processes, subject_of, args.events, args.accounts)
               for index, (name, processes, subject_of) in enumerate(cases)
               if not args.only or index in args.only]
    infra.save_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
