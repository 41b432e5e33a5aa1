"""The servers a benchmark runs against, owned by the benchmark alone.

- PostgreSQL: the machine's own server (``BENCH_DATABASE_URL``, default the local 5432), in a
  database of our own, ``billing_bench`` (or ``BENCH_DATABASE``), dropped and created again by
  every benchmark so no figure depends on what an earlier run left behind.
- NATS: a nats-server of our own from the wheel, with a fresh JetStream store: other people's
  test suites delete the USAGE/LEDGER streams on the shared server, which would wreck a run.
- The ledger service: ``python -m ledger_service serve`` as its own process, as production
  runs it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.cpu import CpuMeter
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from services.database import apply_migrations, conninfo, eventsourcing_env
from services.embedded import NatsProcess, free_port, start_nats
from services.runtime import tune_garbage_collector

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run" / "bench"
# BENCH_DATABASE: another name, so two checkouts (or two people) can bench at once
DATABASE_NAME = os.environ.get("BENCH_DATABASE", "billing_bench")
BASE_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MIGRATIONS = ROOT / "ledger_service" / "migrations"
RESULTS_DIR = ROOT / "bench" / "results"
SERVICE_READY_TIMEOUT_S = 60.0
SERVICE_STOP_TIMEOUT_S = 60.0
ANALYZE_CHECK_INTERVAL_S = 1.0
AUTOVACUUM_NAPTIME_S = 60.0  # PostgreSQL's default autovacuum_naptime


def save_json(path: Path, data: Any) -> Path:
    """Write a benchmark's figures whole or not at all (a run stopped mid-write leaves the
    previous file), indented, with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    temporary.replace(path)
    return path


def database_url(name: str = DATABASE_NAME) -> str:
    return BASE_DATABASE_URL.rsplit("/", 1)[0] + "/" + name


def recreate_database(name: str = DATABASE_NAME) -> str:
    """Drop and create the benchmark's database; returns its URL."""
    admin = conninfo(BASE_DATABASE_URL, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(name)


def server_versions(url: str) -> dict[str, str]:
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings: dict[str, str] = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('fsync', 'synchronous_commit', 'shared_buffers', 'wal_level', 'autovacuum')").fetchall())
    return {"postgresql": str(row[0]) if row else "?", **{f"pg_{k}": str(v) for k, v in settings.items()}}


def open_ledger(url: str) -> Ledger:
    """A Ledger over ``url`` as the service builds it (migrations applied first)."""
    apply_migrations(url, "ledger", MIGRATIONS)
    return Ledger(LedgerApplication(env=ledger_env(eventsourcing_env(url, "ledger"))))


@contextlib.contextmanager
def own_nats(run_dir: Path = RUN_DIR) -> Iterator[NatsProcess]:
    """A nats-server with an empty JetStream store under ``run_dir``, stopped afterwards."""
    shutil.rmtree(run_dir / "nats", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    server = start_nats(run_dir)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class LedgerProcess:
    """``python -m ledger_service serve`` on our database and our nats-server."""

    database_url: str
    nats_url: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "ledger_service"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return RUN_DIR / f"{self.name}-{self.port}.log"

    def start(self) -> LedgerProcess:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_PORT")}
        # Our own nats-server: LEDGER of 2 GiB holds the projections run's million entries.
        env.setdefault("NATS_STREAM_BYTES_SCALE", "0.25")
        env.update(DATABASE_URL=self.database_url, NATS_URL=self.nats_url,
                   LEDGER_HTTP_PORT=str(self.port), LOG_LEVEL="WARNING", LOG_FORMAT="json")
        env.update(self.extra_env)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger_service", "serve"], cwd=ROOT, env=env,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"ledger_service exited at start; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"ledger_service not ready in {SERVICE_READY_TIMEOUT_S}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LedgerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def collector_as_in_the_services() -> Iterator[None]:
    """The garbage collector's settings the services and their followers run with
    (services/runtime.py), for work a benchmark runs in its own process; restored
    afterwards. With the defaults, the collector walked the benchmark's whole heap again and
    again, which the services do not do, and the in-process figures said less about them."""
    thresholds = gc.get_threshold()
    tune_garbage_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class AutoAnalyze:
    """Autovacuum's ANALYZE rule, applied to our database while the service runs.

    This machine's PostgreSQL runs with ``autovacuum = off`` (in its configuration file), so
    tables that grow during a run never get statistics, and plans that the service's
    connections prepared while a table was nearly empty (sequential scans) stay cached for
    ever: the holds projection's ``DELETE ... USING unnest(...)`` then scans all of
    open_holds on every flush. A normally configured server analyzes a table once
    50 + 10 % of its rows changed (autovacuum_analyze_threshold / _scale_factor), which
    invalidates those plans; this does the same, on our database only.

    It checks every ``interval_s``. Intake and the projections grow their tables a
    hundredfold within seconds from nearly empty, so they check every second. A server's
    autovacuum visits a database once a minute (``autovacuum_naptime``), which is what
    authorize uses, after one pass of its own once the warm-up has filled the tables: at 1,000
    holds/s a check every second analyzed five tables every second (60 ms of a core, the
    latency's one-second stalls), sixty times as often as a server would.
    """

    def __init__(self, url: str, interval_s: float = ANALYZE_CHECK_INTERVAL_S) -> None:
        self.url = url
        self.interval_s = interval_s
        self.tables_analyzed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-analyze", daemon=True)

    def _run(self) -> None:
        with psycopg.connect(conninfo(self.url), autocommit=True) as conn:
            while not self._stopping.wait(self.interval_s):
                self._analyze_due(conn)

    def analyze_due(self) -> None:
        """One pass now, on a connection of its own."""
        with psycopg.connect(conninfo(self.url), autocommit=True) as conn:
            self._analyze_due(conn)

    def _analyze_due(self, conn: psycopg.Connection[Any]) -> None:
        due = conn.execute(
            "SELECT schemaname, relname FROM pg_stat_user_tables"
            " WHERE n_mod_since_analyze > 50 + 0.1 * greatest(n_live_tup, 0)").fetchall()
        for schema, table in due:
            conn.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema),
                                                          sql.Identifier(table)))
            self.tables_analyzed += 1

    def __enter__(self) -> AutoAnalyze:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join()


class Profiler:
    """py-spy sampling one of our processes (``python -m bench --profile``): a flame graph
    (SVG) and the collapsed stacks (text, for counting where the time goes)."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        py_spy = Path(sys.executable).parent / "py-spy"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        # The flame graph shows every thread; wall.txt every thread's every sample, waiting
        # included (where a thread's time goes); gil.txt only the thread holding the GIL
        # (where the CPU of a GIL-bound process goes).
        for fmt, suffix, extra in (("flamegraph", "svg", ["--threads"]),
                                   ("raw", "wall.txt", ["--threads", "--idle"]),
                                   ("raw", "gil.txt", ["--threads", "--gil"])):
            out = RESULTS_DIR / f"{self.name}.{suffix}"
            self._processes.append(subprocess.Popen(
                [str(py_spy), "record", "--pid", str(self.pid), "--rate", "200", "--format", fmt,
                 "--output", str(out), "--nonblocking", *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for process in self._processes:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self._processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()


def backend_pids(url: str, database: str = DATABASE_NAME) -> list[int]:
    """PostgreSQL backends connected to our database (for their CPU time)."""
    with psycopg.connect(conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,)).fetchall()
    return [int(r[0]) for r in rows]


def service_meter(url: str, nats_server: NatsProcess, service: LedgerProcess) -> CpuMeter:
    """CPU by process group for a run against the ledger service: the service, its database
    backends, the NATS server, and this load generator."""
    return CpuMeter({
        "service": lambda: [service.pid],
        "postgres_backends": lambda: backend_pids(url),
        "nats_server": lambda: [nats_server.process.pid],
        "bench_client": lambda: [os.getpid()],
    })
