"""account_load: how long loading one account takes when it has a very long history.

Target (issue 3): an account with 1,000,000 events loads in at most 5 ms.

The history is built in-process (no NATS): the domain's ``record_usage`` with one line per call,
so every call is one stored event, and ``Ledger.commit`` of many pending events per
transaction with their idempotency keys and entry-index rows, as intake writes them.
The application snapshots an account whenever a save passes a multiple of ``SNAPSHOT_INTERVAL``
(100), at the save's last version.

Then, with the aggregate evicted from the cache before every repetition (a cold load, the
connection pool warm as in a running service):
- ``Ledger.read(account_id)``: what every HTTP read and command does (snapshot + newer
  events, then one indexed look-up for anything written by another process);
- ``app.repository.get(account_id)``: the event store's load alone;
- the raw SQL floor: the two SELECTs a load needs (latest snapshot, events after it);
- a warm ``Ledger.read`` (cached aggregate: only the freshness look-up).

Each is measured twice: at a version that is a multiple of the interval (the snapshot is the
whole state: best case) and interval - 1 versions later, in one save (that many events to
replay on top: the worst case for an account's current version).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from bench import infra
from bench.accounts import SMS_UNIT_PRICE_MICROS, open_prepay_accounts
from bench.options import RunOptions
from bench.stats import LatencySummary, rate_per_s
from ledger_service.app.intake import USAGE_SCOPE
from ledger_service.app.ledger import SNAPSHOT_INTERVAL, Ledger, UnitOfWork
from ledger_service.app.recorder import IdempotencyRow
from ledger_service.domain.values import UsageLine
from services.database import conninfo

NAME = "account_load"
# Pending events per save: bounds the memory and the transaction of one save; 10,000 per save
# built no faster (9.8k against 9.7k events/s).
EVENTS_PER_SAVE = 2_000
CREDIT_MICROS = 10**12  # a million pounds: a million SMS at 0.0395 never run out
REPETITIONS_FULL = 200
REPETITIONS_QUICK = 50
VERSION_TARGET_FULL = 1_000_000
VERSION_CHECKPOINTS_FULL = (10_000, 100_000, 1_000_000)
VERSION_TARGET_QUICK = 20_000
VERSION_CHECKPOINTS_QUICK = (2_000, 20_000)
LOAD_TARGET_MS = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    version_checkpoints: tuple[int, ...]
    repetitions: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(VERSION_CHECKPOINTS_QUICK, REPETITIONS_QUICK)
        return cls(VERSION_CHECKPOINTS_FULL, REPETITIONS_FULL)


def run(options: RunOptions) -> dict[str, Any]:
    settings = Settings.for_mode(options.quick)
    url = infra.recreate_database()
    ledger = infra.open_ledger(url)
    try:
        [account_id] = open_prepay_accounts(ledger, 1, CREDIT_MICROS)
        result: dict[str, Any] = {"benchmark": NAME, "snapshot_interval": SNAPSHOT_INTERVAL,
                                  "events_per_save": EVENTS_PER_SAVE, "build": [],
                                  "loads": []}
        for checkpoint in settings.version_checkpoints:
            result["build"].append(extend_history(ledger, account_id, checkpoint))
            result["loads"].append(measure_loads(ledger, url, account_id, settings.repetitions))
        # interval - 1 events past the last snapshot: the most a load of an account's current
        # version replays.
        worst = settings.version_checkpoints[-1] + SNAPSHOT_INTERVAL - 1
        result["build"].append(extend_history(ledger, account_id, worst))
        result["loads"].append(measure_loads(ledger, url, account_id, settings.repetitions))
        result["storage"] = storage_sizes(url, account_id)
        result["target_met"] = all(load["ledger_read_cold"]["ms_p99"] <= LOAD_TARGET_MS
                                   for load in result["loads"])
        return result
    finally:
        ledger.app.close()


# ------------------------------------------------------------------ building the history


def extend_history(ledger: Ledger, account_id: UUID, version_target: int) -> dict[str, Any]:
    """Record usage events, one line each, until the account is at ``version_target``."""
    started_s = time.perf_counter()
    version_start = ledger.load(account_id).version
    while (version := ledger.load(account_id).version) < version_target:
        count = min(EVENTS_PER_SAVE, version_target - version)
        ledger.run(functools.partial(record_usage_events, ledger, account_id=account_id,
                                     count=count))
    elapsed_s = time.perf_counter() - started_s
    events = version_target - version_start
    print(f"  {NAME}: +{events:,} events to version {version_target:,} in {elapsed_s:.1f} s"
          f" ({rate_per_s(events, elapsed_s):,.0f} events/s)", flush=True)
    return {"version": version_target, "events_added": events, "elapsed_s": round(elapsed_s, 2),
            "rate_per_s": round(rate_per_s(events, elapsed_s))}


def record_usage_events(ledger: Ledger, work: UnitOfWork, *, account_id: UUID, count: int) -> None:
    account = work.touch(ledger.load(account_id))
    now = datetime.now(UTC)
    for _ in range(count):
        event_id = f"load-{account_id}-{account.version + 1}"
        line = UsageLine(event_id=event_id, product="sms", quantity=1,
                         unit_price_micros=SMS_UNIT_PRICE_MICROS, status="submitted",
                         occurred_at=now)
        account.record_usage([line], now)
        work.rows.keys.append(IdempotencyRow(USAGE_SCOPE, event_id, account_id))


# ------------------------------------------------------------------ measuring loads


def measure_loads(ledger: Ledger, url: str, account_id: UUID, repetitions: int) -> dict[str, Any]:
    version = ledger.load(account_id).version
    snapshot_version = latest_snapshot_version(url, account_id)

    def cold_read() -> float:
        ledger.evict([account_id])
        return time_call(lambda: ledger.read(account_id))

    def cold_get() -> float:
        ledger.evict([account_id])
        return time_call(lambda: ledger.app.repository.get(account_id))

    loads: dict[str, Any] = {
        "version": version,
        "snapshot_version": snapshot_version,
        "events_replayed": version - snapshot_version,
        "ledger_read_cold": summarize(repetitions, cold_read),
        "repository_get_cold": summarize(repetitions, cold_get),
        "raw_sql_floor": raw_sql_floor(url, account_id, repetitions),
        "ledger_read_warm": summarize(repetitions, lambda: time_call(lambda: ledger.read(account_id))),
    }
    assert ledger.read(account_id).version == version  # the load is of the whole history
    print(f"  {NAME}: version {version:,} (snapshot at {snapshot_version:,}):"
          f" Ledger.read cold {LatencySummary(**loads['ledger_read_cold']).line()}", flush=True)
    return loads


def time_call(fn: Callable[[], object]) -> float:
    started_s = time.perf_counter()
    fn()
    return time.perf_counter() - started_s


def summarize(repetitions: int, sample_s: Callable[[], float]) -> dict[str, Any]:
    sample_s()  # one unmeasured run: prepared statements, imports, the first connection
    return LatencySummary.of_seconds([sample_s() for _ in range(repetitions)]).as_dict()


def latest_snapshot_version(url: str, account_id: UUID) -> int:
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute("SELECT max(originator_version) FROM ledger.ledger_snapshots"
                           " WHERE originator_id = %s", (account_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def raw_sql_floor(url: str, account_id: UUID, repetitions: int) -> dict[str, Any]:
    """The two SELECTs a snapshot load needs, straight through psycopg (no decoding)."""
    with psycopg.connect(conninfo(url)) as conn:

        def load() -> float:
            started_s = time.perf_counter()
            snapshot = conn.execute(
                "SELECT originator_version, state FROM ledger.ledger_snapshots"
                " WHERE originator_id = %s ORDER BY originator_version DESC LIMIT 1",
                (account_id,), prepare=True).fetchone()
            assert snapshot is not None
            conn.execute(
                "SELECT originator_version, state FROM ledger.ledger_events"
                " WHERE originator_id = %s AND originator_version > %s"
                " ORDER BY originator_version", (account_id, snapshot[0]), prepare=True).fetchall()
            return time.perf_counter() - started_s

        return summarize(repetitions, load)


def storage_sizes(url: str, account_id: UUID) -> dict[str, Any]:
    with psycopg.connect(conninfo(url)) as conn:
        events_mb = conn.execute(
            "SELECT pg_total_relation_size('ledger.ledger_events') / 1e6").fetchone()
        snapshot_bytes = conn.execute(
            "SELECT length(state) FROM ledger.ledger_snapshots WHERE originator_id = %s"
            " ORDER BY originator_version DESC LIMIT 1", (account_id,)).fetchone()
        event_bytes = conn.execute(
            "SELECT avg(length(state)) FROM ledger.ledger_events WHERE originator_id = %s"
            " AND originator_version > 2", (account_id,)).fetchone()
    return {
        "events_table_mb": round(float(events_mb[0]), 1) if events_mb else None,
        "snapshot_state_bytes": int(snapshot_bytes[0]) if snapshot_bytes else None,
        "event_state_bytes_avg": round(float(event_bytes[0])) if event_bytes and event_bytes[0] else None,
    }
