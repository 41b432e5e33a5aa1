"""authorize: latency of ``ledger.v1.authorize`` (core NATS request-reply) under load.

Target (issue 3): p99 at most 5 ms at 1,000 requests/s, and the maximum sustained rate.

The ledger service runs as its own process on our database and nats-server; 1,000 prepay
accounts with plenty of credit are opened in-process before it starts. Every request has a
unique request_id and a random account, so every one places a hold (one event) and an
idempotency key, group-committed by the service's Authorizer.

1. Warm-up (not measured): one request per account, so each account is in the service's
   cache as it would be in steady state.
2. Open loop: requests are *scheduled* at a fixed rate (1,000/s for 10 s) whatever the replies
   do; latency is measured from the scheduled instant to the reply, so a stall counts fully
   against the service (no coordinated omission). The generator's own lag (actual send
   minus scheduled) is reported to show it kept up.
3. Closed loop ramp: N requesters each send, wait for the reply, send again, for N = 1, 2, 4,
   ...; the throughput at each N with its latencies. The maximum sustained rate is the
   highest throughput whose p99 stays within 50 ms.

Raw baselines, same run, same machine: a NATS responder process that answers at once
(bench/echo_responder.py) under the same open loop, which is the messaging floor; and a probe
committing one-row transactions in our database every 20 ms (a process of its own), alone
before the service starts and again while the open loop runs, which is PostgreSQL's commit
floor (an approval needs at least one commit).

The generator is one asyncio process (uvloop, nats-py, one connection, payloads encoded in
advance) on the same 2 cores as the service, nats-server and PostgreSQL: its CPU use is
reported beside each figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
import nats
import psycopg
import uvloop
from nats.aio.client import Client as NATS

from bench import infra
from bench.accounts import fresh_database_with_accounts
from bench.cpu import CpuMeter
from bench.options import RunOptions, profiled
from bench.stats import LatencySummary, rate_per_s
from contracts.ledger import AuthorizeReply
from contracts.subjects import LEDGER_AUTHORIZE
from services.database import conninfo
from services.embedded import NatsProcess

NAME = "authorize"
CREDIT_MICROS = 10**10  # 10,000.00 GBP per account: hundreds of thousands of holds
REQUEST_TIMEOUT_S = 5.0
WARM_UP_CONCURRENCY = 50
P99_LIMIT_MS = 50.0  # the closed-loop ramp's "still sustained" bound
TARGET_P99_MS = 5.0
ECHO_SUBJECT = "bench.echo.authorize"
PROBE_INTERVAL_S = 0.02

_decoder = msgspec.json.Decoder(AuthorizeReply)


@dataclass(frozen=True, slots=True)
class Settings:
    accounts: int
    open_loop_rate_per_s: int
    open_loop_duration_s: float
    concurrency_levels: tuple[int, ...]
    level_duration_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(accounts=100, open_loop_rate_per_s=1_000, open_loop_duration_s=3.0,
                       concurrency_levels=(1, 8, 64), level_duration_s=2.0)
        return cls(accounts=1_000, open_loop_rate_per_s=1_000, open_loop_duration_s=10.0,
                   concurrency_levels=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                   level_duration_s=5.0)


def run(options: RunOptions) -> dict[str, Any]:
    settings = Settings.for_mode(options.quick)
    url, account_ids = fresh_database_with_accounts(settings.accounts, CREDIT_MICROS)
    result: dict[str, Any] = {"benchmark": NAME, "accounts": settings.accounts}
    with infra.own_nats() as nats_server:
        result["baseline_postgres_commit_alone"] = CommitProbe(url).run_for(
            settings.open_loop_duration_s)
        result["baseline_nats_echo"] = echo_baseline(nats_server.url, account_ids, settings)
        with (infra.LedgerProcess(url, nats_server.url) as service,
              infra.AutoAnalyze(url, infra.AUTOVACUUM_NAPTIME_S) as analyzer):
            result.update(measure_service(options, settings, url, nats_server, service,
                                          account_ids, analyzer))
    result["verification"] = verify(url, result)
    result["target_met"] = (result["verification"]["ok"]
                            and result["open_loop"]["latency"]["ms_p99"] <= TARGET_P99_MS)
    return result


def measure_service(options: RunOptions, settings: Settings, url: str,
                    nats_server: NatsProcess, service: infra.LedgerProcess,
                    account_ids: Sequence[UUID], analyzer: infra.AutoAnalyze) -> dict[str, Any]:
    meter = infra.service_meter(url, nats_server, service)
    with profiled(options, service.pid, f"{NAME}-service"):
        return uvloop.run(load(nats_server.url, account_ids, settings, meter, CommitProbe(url),
                               analyzer))


async def load(nats_url: str, account_ids: Sequence[UUID], settings: Settings,
               meter: CpuMeter, probe: CommitProbe, analyzer: infra.AutoAnalyze) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        requests = RequestFactory(account_ids)
        warm_up = await closed_loop(nc, requests.for_each_account(), WARM_UP_CONCURRENCY)
        # as a server that has been running: statistics for the tables the warm-up filled
        await asyncio.to_thread(analyzer.analyze_due)
        meter.start()
        first = requests.sent + 1
        with probe.running():
            open_result = await open_loop(nc, requests, settings.open_loop_rate_per_s,
                                          settings.open_loop_duration_s)
        open_result["cpu"] = meter.stop().as_dict()
        open_result["postgres_commit_probe_during"] = probe.summary()
        open_result["request_numbers"] = (first, requests.sent)
        print(f"  {NAME}: open loop {settings.open_loop_rate_per_s:,}/s:"
              f" {LatencySummary(**open_result['latency']).line()};"
              f" cpu {open_result['cpu']['cores_by_group']}", flush=True)
        ramp = []
        for concurrency in settings.concurrency_levels:
            meter.start()
            first = requests.sent + 1
            level = await timed_closed_loop(nc, requests, concurrency, settings.level_duration_s)
            level["cpu"] = meter.stop().as_dict()
            level["request_numbers"] = (first, requests.sent)
            ramp.append(level)
            print(f"  {NAME}: closed loop x{concurrency}: {level['rate_per_s']:,.0f}/s,"
                  f" {LatencySummary(**level['latency']).line()};"
                  f" cpu {level['cpu']['cores_by_group']}", flush=True)
    finally:
        await nc.close()
    return {
        "warm_up": warm_up,
        "open_loop": open_result,
        "closed_loop": ramp,
        "rate_per_s_max_sustained": max_sustained(ramp),
        "requests_sent": requests.sent,
    }


def request_id(number: int) -> str:
    return f"bench-auth-{number:08d}"


class RequestFactory:
    """Encoded requests, each with a new request_id and a random account."""

    def __init__(self, account_ids: Sequence[UUID], seed: int = 3) -> None:
        self.account_ids = list(account_ids)
        self.random = random.Random(seed)
        self.sent = 0

    def next(self) -> bytes:
        self.sent += 1
        return msgspec.json.encode({
            "request_id": request_id(self.sent),
            "account_id": self.random.choice(self.account_ids),
            "product": "sms", "quantity": 1,
        })

    def batch(self, count: int) -> list[bytes]:
        return [self.next() for _ in range(count)]

    def for_each_account(self) -> list[bytes]:
        payloads = []
        for account_id in self.account_ids:
            self.sent += 1
            payloads.append(msgspec.json.encode({
                "request_id": request_id(self.sent), "account_id": account_id,
                "product": "sms", "quantity": 1}))
        return payloads


@dataclass
class Outcomes:
    latencies_s: list[float]
    replies: Counter[str]

    @classmethod
    def empty(cls) -> Outcomes:
        return cls([], Counter())

    def record(self, reply: bytes | None, latency_s: float) -> None:
        if reply is None:
            self.replies["timeout"] += 1
            return
        decoded = _decoder.decode(reply)
        self.replies["approved" if decoded.approved else f"refused:{decoded.reason}"] += 1
        self.latencies_s.append(latency_s)


async def request(nc: NATS, payload: bytes, subject: str = LEDGER_AUTHORIZE) -> bytes | None:
    try:
        return (await nc.request(subject, payload, timeout=REQUEST_TIMEOUT_S)).data
    except nats.errors.TimeoutError:
        return None


# ------------------------------------------------------------------ open loop


async def open_loop(nc: NATS, requests: RequestFactory, offered_rate_per_s: int,
                    duration_s: float, subject: str = LEDGER_AUTHORIZE) -> dict[str, Any]:
    payloads = requests.batch(int(offered_rate_per_s * duration_s))
    interval_s = 1.0 / offered_rate_per_s
    outcomes = Outcomes.empty()
    send_lags_s: list[float] = []
    in_flight: set[asyncio.Task[None]] = set()

    # perf_counter, not loop.time(): uvloop's clock has a resolution of 1 ms, and its timers
    # may fire up to 1 ms early. A request sent late is timed from its scheduled instant (the
    # lag counts against the service, as a real sender's would); one sent early, from when
    # it was sent.
    async def one(payload: bytes, scheduled_s: float) -> None:
        sent_s = time.perf_counter()
        send_lags_s.append(max(0.0, sent_s - scheduled_s))
        reply = await request(nc, payload, subject)
        outcomes.record(reply, time.perf_counter() - min(sent_s, scheduled_s))

    started_s = time.perf_counter()
    for index, payload in enumerate(payloads):
        scheduled_s = started_s + index * interval_s
        if (delay_s := scheduled_s - time.perf_counter()) > 0:
            await asyncio.sleep(delay_s)
        task = asyncio.create_task(one(payload, scheduled_s))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed_s = time.perf_counter() - started_s
    return {
        "rate_per_s_offered": offered_rate_per_s,
        "rate_per_s_achieved": round(rate_per_s(len(payloads), elapsed_s), 1),
        "duration_s": duration_s,
        "latency": LatencySummary.of_seconds(outcomes.latencies_s).as_dict(),
        "generator_send_lag": LatencySummary.of_seconds(send_lags_s).as_dict(),
        "replies": dict(outcomes.replies),
    }


# ------------------------------------------------------------------ closed loop


async def closed_loop(nc: NATS, payloads: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    """Send a fixed list of requests with ``concurrency`` requesters."""
    queue = list(reversed(payloads))
    outcomes = Outcomes.empty()

    async def requester() -> None:
        while queue:
            payload = queue.pop()
            started_s = time.perf_counter()
            reply = await request(nc, payload)
            outcomes.record(reply, time.perf_counter() - started_s)

    started_s = time.perf_counter()
    await asyncio.gather(*(requester() for _ in range(concurrency)))
    elapsed_s = time.perf_counter() - started_s
    return {"requests": len(payloads), "rate_per_s": round(rate_per_s(len(payloads), elapsed_s)),
            "replies": dict(outcomes.replies)}


async def timed_closed_loop(nc: NATS, requests: RequestFactory, concurrency: int,
                            duration_s: float) -> dict[str, Any]:
    """``concurrency`` requesters for ``duration_s``, each sending its next request as soon as
    the previous reply arrives."""
    outcomes = Outcomes.empty()
    deadline_s = time.perf_counter() + duration_s
    next_payload: Callable[[], bytes] = requests.next

    async def requester() -> None:
        while time.perf_counter() < deadline_s:
            payload = next_payload()
            started_s = time.perf_counter()
            reply = await request(nc, payload)
            outcomes.record(reply, time.perf_counter() - started_s)

    started_s = time.perf_counter()
    await asyncio.gather(*(requester() for _ in range(concurrency)))
    elapsed_s = time.perf_counter() - started_s
    completed = len(outcomes.latencies_s)
    return {
        "concurrency": concurrency,
        "rate_per_s": round(rate_per_s(completed, elapsed_s), 1),
        "latency": LatencySummary.of_seconds(outcomes.latencies_s).as_dict(),
        "replies": dict(outcomes.replies),
    }


def max_sustained(ramp: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    within = [level for level in ramp
              if level["latency"]["ms_p99"] <= P99_LIMIT_MS and "timeout" not in level["replies"]]
    if not within:
        return None
    best = max(within, key=lambda level: level["rate_per_s"])
    return {"rate_per_s": best["rate_per_s"], "concurrency": best["concurrency"],
            "ms_p99": best["latency"]["ms_p99"], "p99_limit_ms": P99_LIMIT_MS}


# ------------------------------------------------------------------ raw baselines


def echo_baseline(nats_url: str, account_ids: Sequence[UUID], settings: Settings) -> dict[str, Any]:
    """The same open loop against a responder process that does no work."""

    async def measure() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            return await open_loop(nc, RequestFactory(account_ids), settings.open_loop_rate_per_s,
                                   settings.open_loop_duration_s, subject=ECHO_SUBJECT)
        finally:
            await nc.close()

    with echo_responder(nats_url):
        result = uvloop.run(measure())
    print(f"  {NAME}: raw NATS echo at {settings.open_loop_rate_per_s:,}/s:"
          f" {LatencySummary(**result['latency']).line()}", flush=True)
    return result


@contextlib.contextmanager
def echo_responder(nats_url: str) -> Iterator[None]:
    process = subprocess.Popen([sys.executable, "-m", "bench.echo_responder", nats_url, ECHO_SUBJECT],
                               cwd=infra.ROOT, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("echo responder did not start")
        yield
    finally:
        process.terminate()
        process.wait(10)


class CommitProbe:
    """One-row INSERT + COMMIT in our database every PROBE_INTERVAL_S, in a process of its
    own: what a commit costs on this machine's PostgreSQL and disk at that moment.

    Its own process, and a commit every 20 ms: as a thread of the generator, every 5 ms, it
    took the generator's interpreter lock (whose switch interval is 5 ms) in the middle of
    the timings it was meant to stand beside, and added half as many commits again as the
    service's own at 1,000 requests/s."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies_s: list[float] = []

    def run_for(self, duration_s: float) -> dict[str, Any]:
        with self.running():
            time.sleep(duration_s)
        summary = self.summary()
        print(f"  {NAME}: raw PostgreSQL commit alone: {LatencySummary(**summary).line()}", flush=True)
        return summary

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        stopping = context.Event()
        process = context.Process(target=probe_commits, name="bench-commit-probe", daemon=True,
                                  args=(self.url, PROBE_INTERVAL_S, stopping, theirs))
        process.start()
        try:
            ours.recv()  # connected: the measurement starts now
            yield
        finally:
            stopping.set()
            self.latencies_s = ours.recv()
            process.join()

    def summary(self) -> dict[str, Any]:
        return LatencySummary.of_seconds(self.latencies_s).as_dict()


# ------------------------------------------------------------------ checks


def verify(url: str, result: dict[str, Any]) -> dict[str, Any]:
    """Every request approved, and exactly one stored reply (idempotency key) per request."""
    phases = [result["warm_up"], result["open_loop"], *result["closed_loop"]]
    replies: Counter[str] = Counter()
    for phase in phases:
        replies.update(phase["replies"])
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger.idempotency_keys WHERE scope = 'authorize'").fetchone()
        for phase in phases[1:]:
            phase["group_commit"] = group_commit_sizes(conn, *phase["request_numbers"])
    keys = int(row[0]) if row else 0
    ok = replies["approved"] == result["requests_sent"] == keys
    return {"ok": ok, "replies": dict(replies), "requests_sent": result["requests_sent"],
            "idempotency_keys": keys}


def group_commit_sizes(conn: psycopg.Connection[Any], first: int, last: int) -> dict[str, Any]:
    """Requests per transaction in a phase: the stored replies of one batch share the xmin
    of the transaction that wrote them."""
    row = conn.execute(
        "SELECT count(*), count(DISTINCT xmin::text), max(n) FROM ("
        " SELECT xmin, count(*) OVER (PARTITION BY xmin::text) AS n FROM ledger.idempotency_keys"
        " WHERE scope = 'authorize' AND key BETWEEN %s AND %s) AS k",
        (request_id(first), request_id(last))).fetchone()
    if not row or not row[1]:
        return {}
    requests, transactions, largest = int(row[0]), int(row[1]), int(row[2])
    return {"transactions": transactions, "requests_per_transaction_mean": round(requests / transactions, 1),
            "requests_per_transaction_max": largest}


def probe_commits(url: str, interval_s: float, stopping: Any, pipe: Any) -> None:
    """The commit probe's process: commit until told to stop, then send the latencies."""
    latencies_s: list[float] = []
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe"
                     " (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        pipe.send("ready")
        while not stopping.wait(interval_s):
            started_s = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe DEFAULT VALUES", prepare=True)
            latencies_s.append(time.perf_counter() - started_s)
    pipe.send(latencies_s)
