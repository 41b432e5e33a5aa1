"""asof_reads: authorize latency while ``?as_of=`` reads of a 1,000,000-event account run.

Issue 14 ("Reads must not stall writes"): reads that load an account run on reader threads
over a second application instance (ledger_service/reader.py), and ``as_of`` loads from the
newest snapshot at or before the wanted version. tests/integration/test_ledger_reader.py
proves both structurally; this measures whether authorize's latency moves while a portal
hammers old instants of a very long account, and what each such read costs.

1. Seed (kept between runs): one prepay account with ``events`` stored events, written
   in-process through the domain's ``record_usage`` (one line, one event per call) and
   ``Ledger.run`` (the service's commit path: hash chain, idempotency keys, entry index,
   snapshots taken as the service takes them). Each save holds one snapshot interval (100)
   of events and ends on a multiple of it, so a snapshot stands every 100 versions, as for an
   account whose saves are each at most an interval (intake batches for one account can be
   larger: then an as-of load replays up to that save's events, see docs/design.md). The
   database (``billing_asofbench``) is kept, with a row saying what it holds, and reused by
   the next run unless ``--reseed``.
2. The ledger service (``python -m ledger_service serve``) on that database and a nats-server
   of our own; before measuring, its followers (publisher, projections) catch up with the
   seeded log, so their catch-up is not in the figures. A fresh set of authorize accounts
   (opened in-process before the service starts) gets one warm-up request each.
3. Authorize at a fixed rate (open loop, latency from the scheduled instant:
   bench/authorize.py) in phases of ``phase_s``: one settling phase (not reported), then
   ``rounds`` rounds of four phases, interleaved so that other people's work on the shared
   machine weighs on each kind alike: "alone"; "with as_of reads", while a process of its
   own keeps ``readers`` concurrent ``GET /v1/accounts/{id}/balance?as_of=<random instant in
   the history>`` of the big account going (closed loop: as many as the service answers);
   "with a CPU burner", the control: processes spinning for as many cores as the reads'
   phase used beyond the phase alone, touching nothing of the service. If authorize suffers
   as much from the burner as from the reads, what it suffers from is a busy machine, not
   the reads. "with paced as_of reads": the same readers held to ``paced_reads_per_s`` in
   all (a portal's steady trickle rather than a flood). CPU per process group from /proc for
   every phase; per authorization (phases alone) and per as-of read (the unpaced phase,
   beyond the same round's phase alone).

``python -m bench.asof_reads [--quick] [--reseed]`` or ``python -m bench --only asof_reads``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
import psycopg
import uvloop
from psycopg import sql

from bench import infra
from bench.account_load import record_usage_events
from bench.accounts import open_prepay_accounts
from bench.authorize import RequestFactory, closed_loop, open_loop
from bench.cpu import CpuMeter
from bench.options import RunOptions
from bench.stats import LatencySummary, rate_per_s
from ledger_service.app.ledger import SNAPSHOT_INTERVAL, Ledger
from ledger_service.lag import read_lags
from services.database import conninfo
from services.http.auth import DEVELOPMENT_JWT_SECRET, mint_token

NAME = "asof_reads"
DATABASE_NAME = "billing_asofbench"
RUN_DIR = infra.RUN_DIR / NAME
SEED_TABLE = "bench_asof_seed"
EVENTS_PER_SAVE = SNAPSHOT_INTERVAL
BIG_CREDIT_MICROS = 10**12  # a million SMS at 0.0395 never run out
AUTH_CREDIT_MICROS = 10**10
FOLLOWERS_CATCH_UP_TIMEOUT_S = 1_200.0
READ_TIMEOUT_S = 30.0
WARM_UP_CONCURRENCY = 20


@dataclass(frozen=True, slots=True)
class Settings:
    events: int
    auth_accounts: int
    rate_per_s: int
    phase_s: float
    readers: int
    rounds: int
    paced_reads_per_s: float  # the paced phase: a portal's steady trickle rather than a flood

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(events=20_000, auth_accounts=100, rate_per_s=200, phase_s=5.0, readers=4,
                       rounds=1, paced_reads_per_s=10.0)
        return cls(events=1_000_000, auth_accounts=500, rate_per_s=200, phase_s=20.0, readers=4,
                   rounds=3, paced_reads_per_s=10.0)


def run(options: RunOptions, reseed: bool = False) -> dict[str, Any]:
    settings = Settings.for_mode(options.quick)
    # quick runs keep a seed of their own: they must not drop the million-event one
    database = DATABASE_NAME + ("_quick" if options.quick else "")
    url, seed = seeded_database(database, settings.events, reseed)
    auth_ids = open_authorize_accounts(url, settings.auth_accounts)
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the seed's WAL is not flushed during the measurement
    result: dict[str, Any] = {"benchmark": NAME, "settings": vars_of(settings), "seed": seed,
                              "snapshot_interval": SNAPSHOT_INTERVAL}
    with infra.own_nats(RUN_DIR) as nats_server, infra.LedgerProcess(url, nats_server.url) as service:
        result["followers_catch_up_s"] = wait_for_followers(url)
        meter = CpuMeter({
            "service": lambda: [service.pid],
            "service_children": lambda: children_of(service.pid),
            "postgres_backends": lambda: infra.backend_pids(url, database),
            "nats_server": lambda: [nats_server.process.pid],
            "bench_client": lambda: [os.getpid()],
        })
        result.update(uvloop.run(measure(settings, url, service.url, nats_server.url, auth_ids,
                                         seed, meter)))
    result["verification"] = verify(result)
    result["summary"] = summarize_rounds(result["rounds"])
    summary = result["summary"]
    alone = summary["alone"]["authorize_ms_p99_median"]
    paced = summary["with_paced_asof_reads"]["authorize_ms_p99_median"]
    flood = summary["with_asof_reads"]["authorize_ms_p99_median"]
    burner = summary["with_cpu_burner"]["authorize_ms_p99_median"]
    # "unchanged": at a portal's pace, the median p99 within 2 ms or 50 % of the median p99
    # alone; under a flood that takes a core of two, no worse (within the same margin) than
    # the control, a CPU burner of the reads' size that touches nothing of the service.
    result["target_met"] = (result["verification"]["ok"]
                            and paced <= max(alone * 1.5, alone + 2.0)
                            and flood <= max(burner * 1.5, burner + 2.0))
    return result


PHASES = ("alone", "with_asof_reads", "with_cpu_burner", "with_paced_asof_reads")
READ_PHASES = ("with_asof_reads", "with_paced_asof_reads")


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of phase, the median over rounds of authorize's percentiles; CPU per
    authorization (phases alone) and per as-of read (beyond the same round's phase alone)."""
    summary: dict[str, Any] = {}
    for kind in PHASES:
        latencies = [r[kind]["authorize"]["latency"] for r in rounds]
        summary[kind] = {f"authorize_{p}_median": statistics.median(item[p] for item in latencies)
                         for p in ("ms_p50", "ms_p95", "ms_p99", "ms_max")}
    authorizations = [r["alone"]["authorize"]["rate_per_s_offered"] * r["alone"]["authorize"]["duration_s"]
                      for r in rounds]
    summary["cpu_ms_per_authorization"] = {
        group: round(1000 * sum(r["alone"]["cpu_s"][group] for r in rounds) / sum(authorizations), 3)
        for group in ("service", "service_children", "postgres_backends")}
    for kind in READ_PHASES:
        kind_reads = [r[kind]["asof_reads"] for r in rounds]
        summary[kind]["asof_reads"] = {
            "per_round_rate_per_s": [item["rate_per_s"] for item in kind_reads],
            "answered": sum(item["ok"] for item in kind_reads),
            **{f"{p}_median": statistics.median(item["latency"][p] for item in kind_reads)
               for p in ("ms_p50", "ms_p95", "ms_p99")}}
    reads = [r["with_asof_reads"]["asof_reads"] for r in rounds]
    answered = sum(item["ok"] for item in reads)
    summary["cpu_ms_per_asof_read"] = {
        group: round(1000 * sum(r["with_asof_reads"]["cpu_s"][group] - r["alone"]["cpu_s"][group]
                                for r in rounds) / max(answered, 1), 3)
        for group in ("service", "service_children", "postgres_backends")}
    summary["cpu_ms_per_asof_read"]["asof_client"] = round(
        1000 * sum(r["with_asof_reads"]["cpu_s"].get("asof_client", 0.0) for r in rounds)
        / max(answered, 1), 3)
    return summary


def vars_of(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.__slots__}


# ------------------------------------------------------------------ the seed


def seeded_database(database: str, events: int, reseed: bool) -> tuple[str, dict[str, Any]]:
    """Our database holding one account of ``events`` events; reused when it already does."""
    url = infra.database_url(database)
    if not reseed and (seed := existing_seed(url, events)) is not None:
        print(f"  {NAME}: reusing the seeded account {seed['account_id']} ({events:,} events)"
              f" in {database} (--reseed to build it again)", flush=True)
        return url, {**seed, "reused": True}
    infra.recreate_database(database)
    ledger = infra.open_ledger(url)
    try:
        [account_id] = open_prepay_accounts(ledger, 1, BIG_CREDIT_MICROS)
        build = build_history(ledger, account_id, events)
    finally:
        ledger.app.close()
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (account_id uuid NOT NULL, events integer NOT NULL,"
                             " build jsonb NOT NULL)").format(sql.Identifier(SEED_TABLE)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(sql.Identifier(SEED_TABLE)),
                     (account_id, events, psycopg.types.json.Jsonb(build)))
        conn.execute("VACUUM ANALYZE")  # what autovacuum would have done (it is off here)
    seed = existing_seed(url, events)
    assert seed is not None
    return url, {**seed, "reused": False}


def existing_seed(url: str, events: int) -> dict[str, Any] | None:
    try:
        with psycopg.connect(conninfo(url)) as conn:
            row = conn.execute(sql.SQL("SELECT account_id, build FROM {} WHERE events = %s")
                               .format(sql.Identifier(SEED_TABLE)), (events,)).fetchone()
            if row is None:
                return None
            account_id = row[0]
            stats = conn.execute(
                "SELECT max(originator_version), count(*) FROM ledger.ledger_events"
                " WHERE originator_id = %s", (account_id,)).fetchone()
            snapshots = conn.execute(
                "SELECT count(*) FROM ledger.ledger_snapshots WHERE originator_id = %s",
                (account_id,)).fetchone()
    except psycopg.OperationalError:  # no such database
        return None
    except psycopg.errors.UndefinedTable:
        return None
    if stats is None or stats[0] != events:
        return None
    first, last = recorded_range(url, account_id)
    return {"account_id": str(account_id), "events": int(stats[1]),
            "version": int(stats[0]), "snapshots": int(snapshots[0]) if snapshots else 0,
            "first_recorded_at": first.isoformat(), "last_recorded_at": last.isoformat(),
            "build": row[1]}


def build_history(ledger: Ledger, account_id: UUID, version_target: int) -> dict[str, Any]:
    """Usage events, one line each, EVENTS_PER_SAVE per save, each save ending on a multiple
    of the interval, until the account is at ``version_target``."""
    started_s = time.perf_counter()
    version = ledger.load(account_id).version
    version_start = version
    last_report_s = started_s
    while version < version_target:
        count = min(EVENTS_PER_SAVE - version % EVENTS_PER_SAVE, version_target - version)
        ledger.run(functools.partial(record_usage_events, ledger, account_id=account_id,
                                     count=count))
        version = ledger.load(account_id).version
        if time.perf_counter() - last_report_s > 30:
            last_report_s = time.perf_counter()
            elapsed_s = last_report_s - started_s
            print(f"  {NAME}: seeding: version {version:,} after {elapsed_s:.0f} s"
                  f" ({rate_per_s(version - version_start, elapsed_s):,.0f} events/s)", flush=True)
    elapsed_s = time.perf_counter() - started_s
    events = version_target - version_start
    print(f"  {NAME}: seeded {events:,} events to version {version_target:,} in {elapsed_s:.1f} s"
          f" ({rate_per_s(events, elapsed_s):,.0f} events/s)", flush=True)
    return {"events_added": events, "elapsed_s": round(elapsed_s, 1),
            "rate_per_s": round(rate_per_s(events, elapsed_s)), "events_per_save": EVENTS_PER_SAVE}


def recorded_range(url: str, account_id: UUID) -> tuple[datetime, datetime]:
    """When the account's first usage event (version 3) and its last event were recorded."""
    stamp = ("SELECT (convert_from(state, 'UTF8')::json -> 'timestamp' ->> '_data_')::timestamptz"
             " FROM ledger.ledger_events WHERE originator_id = %s AND originator_version = %s")
    with psycopg.connect(conninfo(url)) as conn:
        newest = conn.execute("SELECT max(originator_version) FROM ledger.ledger_events"
                              " WHERE originator_id = %s", (account_id,)).fetchone()
        assert newest is not None
        first = conn.execute(stamp, (account_id, min(3, newest[0]))).fetchone()
        last = conn.execute(stamp, (account_id, newest[0])).fetchone()
    assert first is not None and last is not None
    return first[0], last[0]


def open_authorize_accounts(url: str, count: int) -> list[UUID]:
    """Fresh accounts for this run's authorizations (the seed's database is reused)."""
    ledger = infra.open_ledger(url)
    try:
        return open_prepay_accounts(ledger, count, AUTH_CREDIT_MICROS)
    finally:
        ledger.app.close()


def wait_for_followers(url: str, timeout_s: float = FOLLOWERS_CATCH_UP_TIMEOUT_S) -> float:
    """Until the service's publisher and projections have caught up with the log (on the
    seed's first run they have a million events to go through)."""
    started_s = time.perf_counter()
    next_report_s = 0.0
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("SET search_path TO ledger, public")
        while True:
            lags = read_lags(conn)
            behind = {lag.name: lag.behind_events for lag in lags if lag.behind_events}
            if lags and not behind:
                break
            waited_s = time.perf_counter() - started_s
            if waited_s > timeout_s:
                raise TimeoutError(f"followers still behind after {timeout_s:.0f} s: {behind}")
            if waited_s >= next_report_s:
                next_report_s += 30.0
                print(f"  {NAME}: waiting for the followers: {behind}", flush=True)
            time.sleep(1.0)
    waited_s = time.perf_counter() - started_s
    print(f"  {NAME}: followers caught up with the log in {waited_s:.0f} s", flush=True)
    return round(waited_s, 1)


# ------------------------------------------------------------------ the measurement


async def measure(settings: Settings, url: str, service_url: str, nats_url: str,
                  auth_ids: list[UUID], seed: dict[str, Any], meter: CpuMeter) -> dict[str, Any]:
    """A settling phase (not reported), then ``rounds`` rounds of: authorize alone, with the
    as-of reads, with the CPU burner. Interleaved, so that other people's work on the shared
    machine, which comes and goes, weighs on every kind of phase alike."""
    nc = await nats.connect(nats_url)
    rounds: list[dict[str, Any]] = []
    try:
        requests = RequestFactory(auth_ids)
        warm_up = await closed_loop(nc, requests.for_each_account(), WARM_UP_CONCURRENCY)
        # Statistics as a running server's would have them. Not autovacuum's rule here: the
        # seed's analyze saw a million usage keys and no authorize key, and the authorize
        # keys of earlier runs (tens of thousands, under autovacuum's 10 %) leave that
        # estimate standing; the planner then looks a key up by scope alone and filters the
        # keys (every authorize key read per request: 33 ms at 24,500 keys, found by this
        # benchmark; docs/benchmarks.md).
        await asyncio.to_thread(analyze, url)
        # the reads' own warm-up: the reader's connections and prepared statements
        await asyncio.to_thread(read_for, service_url, seed, 1, 2.0)
        settling = await phase(nc, requests, settings, meter, None, "settling (not reported)")
        for _ in range(settings.rounds):
            alone = await phase(nc, requests, settings, meter, None)
            with_reads = await phase(nc, requests, settings, meter,
                                     ReadLoad(service_url, seed, settings.readers))
            # The control: as much CPU again as the reads added, burnt by processes that have
            # nothing to do with the service. What authorize loses here, it loses to a busy
            # machine, not to the reads.
            burn_cores = extra_cores(alone, with_reads)
            with CpuBurner(burn_cores) as burner:
                meter.groups = {**meter.groups, "cpu_burner": burner.pids}
                with_burner = await phase(nc, requests, settings, meter, None,
                                          f"with a CPU burner of {burn_cores:.2f} cores")
                meter.groups = {k: v for k, v in meter.groups.items() if k != "cpu_burner"}
            with_burner["burner_cores_wanted"] = round(burn_cores, 2)
            paced = await phase(nc, requests, settings, meter,
                                ReadLoad(service_url, seed, settings.readers,
                                         settings.paced_reads_per_s))
            rounds.append({"alone": alone, "with_asof_reads": with_reads,
                           "with_cpu_burner": with_burner, "with_paced_asof_reads": paced})
    finally:
        await nc.close()
    return {"warm_up": warm_up, "settling": settling, "rounds": rounds,
            "requests_sent": requests.sent}


async def phase(nc: Any, requests: RequestFactory, settings: Settings, meter: CpuMeter,
                reads: ReadLoad | None, label: str = "alone") -> dict[str, Any]:
    if reads is not None:
        label = f"with {settings.readers} as_of readers" + (
            f" paced at {reads.rate_per_s:g}/s" if reads.rate_per_s else "")
    if reads is not None:
        reads.start()
        meter.groups = {**meter.groups, "asof_client": lambda: [reads.pid]}
    meter.start()
    result: dict[str, Any] = {"authorize": await open_loop(nc, requests, settings.rate_per_s,
                                                           settings.phase_s)}
    cpu = meter.stop()
    result["cpu"] = cpu.as_dict()
    result["cpu_s"] = {k: round(v, 3) for k, v in cpu.cpu_s_by_group.items()}
    authorizations = int(settings.rate_per_s * settings.phase_s)
    if reads is None:
        result["cpu_ms_per_authorization"] = {
            group: round(1000 * cpu.cpu_s_by_group[group] / authorizations, 3)
            for group in ("service", "service_children", "postgres_backends")}
    else:
        result["asof_reads"] = await asyncio.to_thread(reads.stop)
        meter.groups = {k: v for k, v in meter.groups.items() if k != "asof_client"}
    line = LatencySummary(**result["authorize"]["latency"]).line()
    print(f"  {NAME}: authorize {settings.rate_per_s}/s {label}: {line}; {cpu.line()}", flush=True)
    if reads is not None:
        print(f"  {NAME}: as_of reads: {result['asof_reads']['rate_per_s']:,.1f}/s,"
              f" {LatencySummary(**result['asof_reads']['latency']).line()}", flush=True)
    return result


class ReadLoad:
    """``readers`` concurrent as-of balance reads of the big account, in a process of its own
    (so the generator timing authorize does not share an interpreter with it)."""

    def __init__(self, service_url: str, seed: dict[str, Any], readers: int,
                 rate_per_s: float | None = None) -> None:
        self.service_url = service_url
        self.seed = seed
        self.readers = readers
        self.rate_per_s = rate_per_s
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe()
        self._stopping = context.Event()
        self._process = context.Process(target=read_process, name="bench-asof-reads", daemon=True,
                                         args=(service_url, seed, readers, rate_per_s, self._stopping,
                                               theirs))

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def start(self) -> None:
        self._process.start()
        self._ours.recv()  # the first reads are answered: the load is on

    def stop(self) -> dict[str, Any]:
        self._stopping.set()
        result: dict[str, Any] = self._ours.recv()
        self._process.join()
        return result


def read_process(service_url: str, seed: dict[str, Any], readers: int, rate_per_s: float | None,
                 stopping: Any, pipe: Any) -> None:
    pipe.send(read_until(service_url, seed, readers, stopping.is_set,
                         ready=lambda: pipe.send("ready"), paced_per_s=rate_per_s))


def read_for(service_url: str, seed: dict[str, Any], readers: int, seconds: float) -> dict[str, Any]:
    deadline_s = time.perf_counter() + seconds
    return read_until(service_url, seed, readers, lambda: time.perf_counter() > deadline_s)


def read_until(service_url: str, seed: dict[str, Any], readers: int, done: Any,
               ready: Any = None, paced_per_s: float | None = None) -> dict[str, Any]:
    """Reads until ``done()``: each reader sends its next read when the last is answered, or,
    with ``paced_per_s``, at its next slot of a fixed schedule (all readers together making
    that rate) unless the last read is still running."""
    first = datetime.fromisoformat(seed["first_recorded_at"])
    last = datetime.fromisoformat(seed["last_recorded_at"])
    span_us = int((last - first) / timedelta(microseconds=1))
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="bench", scopes=["operator"])
    path = f"/v1/accounts/{seed['account_id']}/balance"
    latencies_s: list[float] = []
    statuses: Counter[str] = Counter()
    rng = random.Random(14)

    async def reader(client: httpx.AsyncClient, number: int) -> None:
        interval_s = readers / paced_per_s if paced_per_s else 0.0
        next_s = time.perf_counter() + number * interval_s / readers
        while not done():
            if interval_s:
                if (wait_s := next_s - time.perf_counter()) > 0:
                    await asyncio.sleep(wait_s)
                next_s = max(next_s + interval_s, time.perf_counter())
            instant = first + timedelta(microseconds=rng.randrange(span_us + 1))
            started_s = time.perf_counter()
            response = await client.get(path, params={"as_of": instant.isoformat()})
            elapsed_s = time.perf_counter() - started_s
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies_s.append(elapsed_s)

    async def main() -> float:
        async with httpx.AsyncClient(base_url=service_url, timeout=READ_TIMEOUT_S,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            response = await client.get(path, params={"as_of": last.isoformat()})
            response.raise_for_status()
            if ready is not None:
                ready()
            started_s = time.perf_counter()
            await asyncio.gather(*(reader(client, n) for n in range(readers)))
            return time.perf_counter() - started_s

    elapsed_s = uvloop.run(main())
    ok = len(latencies_s)
    return {"readers": readers, "rate_per_s_paced": paced_per_s, "ok": ok, "statuses": dict(statuses),
            "elapsed_s": round(elapsed_s, 2), "rate_per_s": round(rate_per_s(ok, elapsed_s), 1),
            "latency": LatencySummary.of_seconds(latencies_s).as_dict()}


READ_LOAD_GROUPS = ("service", "service_children", "postgres_backends", "asof_client")


def extra_cores(alone: dict[str, Any], with_reads: dict[str, Any]) -> float:
    """The cores the reads' phase used beyond the phase alone (service, its followers,
    PostgreSQL, the reading client)."""
    before = alone["cpu"]["cores_by_group"]
    after = with_reads["cpu"]["cores_by_group"]
    return max(0.05, sum(after.get(g, 0.0) for g in READ_LOAD_GROUPS)
               - sum(before.get(g, 0.0) for g in READ_LOAD_GROUPS))


def analyze(url: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("ANALYZE")


def children_of(pid: int) -> list[int]:
    """The service's own child processes (its followers and its reader process)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


BURN_SLICE_S = 0.002


class CpuBurner:
    """Processes spinning for a share of the time: ``cores`` cores of CPU in all."""

    def __init__(self, cores: float) -> None:
        count = max(1, math.ceil(cores))
        context = multiprocessing.get_context("spawn")
        self._stopping = context.Event()
        self._processes = [context.Process(target=burn, args=(cores / count, self._stopping),
                                           name="bench-cpu-burner", daemon=True)
                           for _ in range(count)]

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def __enter__(self) -> CpuBurner:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for process in self._processes:
            process.join(10)


def burn(share: float, stopping: Any) -> None:
    idle_s = BURN_SLICE_S * (1 - share) / share if share < 1 else 0.0
    while not stopping.is_set():
        until_s = time.perf_counter() + BURN_SLICE_S
        while time.perf_counter() < until_s:
            pass
        if idle_s:
            time.sleep(idle_s)


def verify(result: dict[str, Any]) -> dict[str, Any]:
    """Every authorization approved, every as-of read answered 200."""
    phases = [result["settling"], *(r[kind] for r in result["rounds"] for kind in PHASES)]
    replies: Counter[str] = Counter()
    for item in phases:
        replies.update(item["authorize"]["replies"])
    statuses: Counter[str] = Counter()
    for r in result["rounds"]:
        for kind in READ_PHASES:
            statuses.update(r[kind]["asof_reads"]["statuses"])
    sent = sum(int(item["authorize"]["rate_per_s_offered"] * item["authorize"]["duration_s"])
               for item in phases)
    ok = replies["approved"] == sent and set(statuses) == {"200"}
    return {"ok": ok, "authorize_replies": dict(replies), "authorize_sent": sent,
            "asof_statuses": dict(statuses)}


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import describe_machine, write_result

    parser = argparse.ArgumentParser(prog="python -m bench.asof_reads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 events, 5 s phases")
    parser.add_argument("--reseed", action="store_true", help="build the seeded account again")
    args = parser.parse_args(argv)
    options = RunOptions(quick=args.quick)
    machine = describe_machine()
    started_s = time.perf_counter()
    result = run(options, reseed=args.reseed)
    result["duration_s"] = round(time.perf_counter() - started_s, 1)
    result["machine"] = machine
    result["mode"] = "quick" if options.quick else "full"
    path = write_result(NAME, result, options)
    print(f"{NAME}: done in {result['duration_s']} s, target met: {result['target_met']};"
          f" {path.relative_to(infra.ROOT)}", flush=True)
    return 0 if result["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
