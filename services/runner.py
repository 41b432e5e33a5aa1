"""``make run``: the whole stack on one machine, in order, and stopped in reverse order.

1. PostgreSQL and NATS: the ones in DATABASE_URL / NATS_URL, or embedded ones under .run/.
2. Each service's migrations, one after another (``python -m <service> migrate``).
3. The four services as separate processes, each waited for until /readyz answers 200.
4. Supervision: a service that exits on its own is restarted with exponential back-off
   (`RestartPolicy`: 1 s, 2 s, 4 s ... capped at 30 s), each restart logged with the service,
   its exit code and the delay. A service that stayed up 60 s has its back-off reset; after 8
   crashes in a row, each within 60 s of its start, the runner gives up and stops the stack
   with exit code 1 (RESTART_* settings change the numbers). The other services never stop.
Ctrl-C or SIGTERM stops the services in reverse order (each drains its in-flight requests and
messages), then NATS, then PostgreSQL. Running it again reuses the data under .run/.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import structlog

from contracts.partitioning import PARTITIONS_DEFAULT
from services.database import parse_database_url, redact_url, with_database
from services.embedded import NatsCluster, NatsProcess, start_nats, start_nats_cluster, start_postgres
from services.logging import configure_logging
from services.settings import (
    SettingsError,
    StackSettings,
    load_stack_settings,
    passthrough_environment,
)

log = structlog.get_logger("runner")


EMBEDDED_STREAM_BYTES_SCALE = 0.1


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    package: str
    port_variable: str
    port_default: int


# Start order; the reverse is the stop order. The ledger first: the others publish to it.
SERVICES = (
    ServiceEntry("ledger_service", "LEDGER_HTTP_PORT", 8001),
    ServiceEntry("payments_service", "PAYMENTS_HTTP_PORT", 8002),
    ServiceEntry("invoicing_service", "INVOICING_HTTP_PORT", 8003),
    ServiceEntry("sync_service", "SYNC_HTTP_PORT", 8004),
)
STOP_TIMEOUT_S = 20
LEDGER_PORT_STEP = 10  # LEDGER_PROCESSES: the n-th ledger process listens on 8001 + 10 n


def ledger_database_map(database_url: str, groups: int, partitions: int) -> str:
    """LEDGER_DATABASES for `make run LEDGER_GROUPS=n`: the partitions cut into n ranges as
    even as they go, the first in `database_url`'s database, the others in databases beside
    it (<database>_ledger_g<k>; `migrate` creates them)."""
    if groups > partitions:
        raise ValueError(f"LEDGER_GROUPS={groups} is more than LEDGER_PARTITIONS={partitions}")
    name = parse_database_url(database_url).dbname
    entries = []
    for group in range(groups):
        first, last = group * partitions // groups, (group + 1) * partitions // groups - 1
        url = database_url if group == 0 else with_database(database_url,
                                                            f"{name}_ledger_g{group}")
        entries.append(f"{first}-{last}={url}")
    return ";".join(entries)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a crashed service, and when to stop trying.

    A crash is fast when the service ran less than `stable_s`; the n-th fast crash in a row
    waits `delay_initial_s * 2**(n-1)`, capped at `delay_max_s`, and the crash after
    `fast_crashes_max` of them gives up. A slow crash (a service that had been up a while)
    starts the count again, so a crash a day never escalates."""

    delay_initial_s: float = 1.0
    delay_max_s: float = 30.0
    stable_s: float = 60.0
    fast_crashes_max: int = 8

    @classmethod
    def of(cls, settings: StackSettings) -> RestartPolicy:
        return cls(delay_initial_s=settings.restart_delay_initial_s,
                   delay_max_s=settings.restart_delay_max_s,
                   stable_s=settings.restart_stable_s,
                   fast_crashes_max=settings.restart_fast_crashes_max)

    def fast_crashes_after(self, fast_crashes: int, uptime_s: float) -> int:
        """The count of fast crashes in a row once a process that ran `uptime_s` exited."""
        return fast_crashes + 1 if uptime_s < self.stable_s else 1

    def delay_s(self, fast_crashes: int) -> float | None:
        """The wait before the restart that follows `fast_crashes` crashes in a row; None:
        give up."""
        if fast_crashes > self.fast_crashes_max:
            return None
        return min(self.delay_initial_s * 2 ** (fast_crashes - 1), self.delay_max_s)


@dataclass(slots=True)
class Running:
    entry: ServiceEntry
    port: int
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)
    fast_crashes: int = 0
    restart_at: float | None = None  # set while a crashed service waits for its restart


class GaveUp(RuntimeError):
    """A service crashed too often in a row; the stack stops."""


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.env = passthrough_environment()
        self.nats: NatsProcess | NatsCluster | None = None
        self.postgres: object | None = None
        self.running: list[Running] = []
        self.stop_requested = threading.Event()
        self.restart_policy = RestartPolicy.of(settings)

    def start_infrastructure(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        database_url = self.settings.database_url
        if database_url is None:
            log.info("starting embedded PostgreSQL", data=str(self.run_dir / "pgdata"))
            self.postgres, database_url = start_postgres(self.run_dir)
        nats_url = self.settings.nats_url
        if nats_url is None and self.settings.cluster > 1:
            # CLUSTER=3: three nats-server processes in one JetStream cluster, every stream
            # replicated to all three, so any one node can die (docs/design.md, "Scale").
            self.nats = start_nats_cluster(self.run_dir, self.settings.cluster)
            nats_url = self.nats.url
            self.env.setdefault("NATS_STREAM_BYTES_SCALE", str(EMBEDDED_STREAM_BYTES_SCALE))
            self.env["NATS_STREAM_REPLICAS"] = str(self.settings.cluster)
            log.info("started an embedded JetStream cluster", nodes=self.settings.cluster,
                     url=nats_url)
        elif nats_url is None:
            node = start_nats(self.run_dir)
            self.nats = node
            nats_url = node.url
            # A laptop's disk: streams of about 2 GiB in all, not production's 19 GiB.
            self.env.setdefault("NATS_STREAM_BYTES_SCALE", str(EMBEDDED_STREAM_BYTES_SCALE))
            log.info("started embedded NATS", url=nats_url, monitor=node.monitor_url)
        self.env["DATABASE_URL"] = database_url
        self.env["NATS_URL"] = nats_url
        if self.settings.ledger_groups > 1:
            self.env["LEDGER_DATABASES"] = ledger_database_map(
                database_url, self.settings.ledger_groups,
                int(self.env.get("LEDGER_PARTITIONS") or PARTITIONS_DEFAULT))
            log.info("ledger partitions across databases", groups=self.settings.ledger_groups,
                     databases=[redact_url(entry.split("=", 1)[1])
                                for entry in self.env["LEDGER_DATABASES"].split(";")])
        # The ledger's signed anchors go beside the stack's data (ledgerctl reads them there).
        self.env.setdefault("ANCHOR_DIR", str(self.run_dir / "anchors"))
        log.info("infrastructure ready", database=redact_url(database_url), nats=nats_url)

    def migrate(self) -> None:
        for entry in SERVICES:
            subprocess.run(
                [sys.executable, "-m", entry.package, "migrate"], env=self.env, check=True
            )

    def spawn(self, entry: ServiceEntry, port: int | None = None) -> subprocess.Popen[bytes]:
        env = self.env if port is None else {**self.env, entry.port_variable: str(port)}
        group = self.ledger_group(entry, port)
        if group is not None:
            env = {**env, "LEDGER_DATABASE_GROUP": str(group)}
        process = subprocess.Popen(
            [sys.executable, "-m", entry.package, "serve"],
            env=env,
            start_new_session=True,  # the runner, not the terminal, decides when it stops
        )
        log.info("service process started", service=entry.package, pid=process.pid, port=port)
        return process

    def respawn(self, service: Running) -> subprocess.Popen[bytes]:
        """A crashed process again, on its own port (the environment's, for the first)."""
        entry = service.entry
        if service.port == int(self.env.get(entry.port_variable, entry.port_default)):
            return self.spawn(entry)
        return self.spawn(entry, service.port)

    def ledger_group(self, entry: ServiceEntry, port: int | None) -> int | None:
        """LEDGER_GROUPS: the database group of the ledger process on `port` (the n-th ledger
        process serves group n mod LEDGER_GROUPS); None otherwise."""
        if entry.package != "ledger_service" or self.settings.ledger_groups == 1:
            return None
        base = int(self.env.get(entry.port_variable, entry.port_default))
        return ((port or base) - base) // LEDGER_PORT_STEP % self.settings.ledger_groups

    def instances(self) -> list[tuple[ServiceEntry, int]]:
        """Each service process to start, with its HTTP port. LEDGER_PROCESSES=N starts N
        ledger processes on the ledger's port, +10, +20, ... (8001, 8011, 8021): they share
        the database and split the account partitions among them (docs/scaling.md)."""
        started: list[tuple[ServiceEntry, int]] = []
        for entry in SERVICES:
            port = int(self.env.get(entry.port_variable, entry.port_default))
            copies = self.settings.ledger_processes * self.settings.ledger_groups \
                if entry.package == "ledger_service" else 1
            started.extend((entry, port + LEDGER_PORT_STEP * i) for i in range(copies))
        return started

    def start_services(self) -> None:
        for entry, port in self.instances():
            self.running.append(Running(entry, port, self.spawn(entry, port)))
        for service in self.running:
            self.wait_ready(service)

    def wait_ready(self, service: Running) -> None:
        url = f"http://{self.settings.http_host}:{service.port}/readyz"
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.entry.package} exited with {service.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{service.entry.package} not ready at {url}")

    def print_urls(self) -> None:
        host = self.settings.http_host
        lines = ["", "Billing ledger is running:"]
        for service in self.running:
            base = f"http://{host}:{service.port}"
            lines.append(
                f"  {service.entry.package:<18} {base}   OpenAPI {base}/schema/openapi.json"
                f"   docs {base}/schema/swagger"
            )
        lines.append(f"  {'PostgreSQL':<18} {redact_url(self.env['DATABASE_URL'])}")
        lines.append(f"  {'NATS':<18} {self.env['NATS_URL']}")
        if "LEDGER_DATABASES" in self.env and self.settings.ledger_groups > 1:
            # ledgerctl needs the map to go over every database (docs/scaling.md)
            shown = ";".join(f"{ranges}={redact_url(url)}" for ranges, url in
                             (entry.split("=", 1) for entry in
                              self.env["LEDGER_DATABASES"].split(";")))
            lines.append(f"  {'LEDGER_DATABASES':<18} {shown}")
        lines.append("Mint a token: .venv/bin/billing-token --scope operator")
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), flush=True)

    def supervise(self) -> int:
        """Wait for a stop signal; restart a service that exits (`RestartPolicy`). Returns the
        stack's exit code: 0 when stopped on request, 1 when a service kept crashing."""
        while not self.stop_requested.wait(0.2):
            try:
                for service in self.running:
                    self.check(service, time.monotonic())
            except GaveUp as exc:
                log.error("giving up; stopping the stack", reason=str(exc))
                return 1
        return 0

    def check(self, service: Running, now: float) -> None:
        """One supervision step for one service: notice an exit, or restart when due."""
        if service.restart_at is not None:
            if now >= service.restart_at and not self.stop_requested.is_set():
                service.process = self.respawn(service)
                service.started_at, service.restart_at = now, None
            return
        code = service.process.poll()
        if code is None:
            return
        uptime_s = now - service.started_at
        service.fast_crashes = self.restart_policy.fast_crashes_after(service.fast_crashes,
                                                                      uptime_s)
        delay_s = self.restart_policy.delay_s(service.fast_crashes)
        exit_fields = {"service": service.entry.package, "exit_code": code,
                       "signal": signal_name(code),
                       "uptime_s": round(uptime_s, 1), "fast_crashes": service.fast_crashes}
        if delay_s is None:
            raise GaveUp(
                f"{service.entry.package} crashed {service.fast_crashes} times in a row, each "
                f"within {self.restart_policy.stable_s:g} s of its start (last exit code "
                f"{code}); see its log above")
        log.warning("service exited; restarting", delay_s=delay_s, **exit_fields)
        service.restart_at = now + delay_s

    def stop(self) -> None:
        for service in reversed(self.running):
            if service.process.poll() is None:
                log.info("stopping", service=service.entry.package)
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.running):
            try:
                service.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing", service=service.entry.package)
                service.process.kill()
                service.process.wait()
        if self.nats is not None:
            log.info("stopping embedded NATS")
            self.nats.stop()
        if self.postgres is not None:
            log.info("stopping embedded PostgreSQL")
            self.postgres.cleanup()  # type: ignore[attr-defined]
        log.info("stack stopped")


def signal_name(code: int) -> str | None:
    """SIGKILL for a process killed by signal 9 (Popen's returncode -9); None for an exit."""
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def acquire_run_lock(run_dir: Path) -> TextIO | None:
    """One stack per run directory: a second ``make run`` must not take over (or stop) the
    servers of the first. The lock dies with the process, so a crash leaves no stale lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / "stack.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        print(f"billing-stack: a stack is already running from {run_dir} (pid {holder}); "
              "stop it first, or set RUN_DIR to start another", file=sys.stderr)
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def main() -> int:
    try:
        settings = load_stack_settings()
    except SettingsError as exc:
        print(f"billing-stack: {exc}", file=sys.stderr)
        return 2
    lock = acquire_run_lock(Path(settings.run_dir))
    if lock is None:
        return 3
    configure_logging(service="runner", fmt=settings.log_format)
    stack = Stack(settings)

    def request_stop(signum: int, _: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        stack.stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        stack.start_infrastructure()
        stack.migrate()
        stack.start_services()
        if not stack.stop_requested.is_set():
            # From here on a service that exits is restarted; before, it fails the start.
            log.info("stack ready", services=[s.entry.package for s in stack.running])
            stack.print_urls()
            code = stack.supervise()
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError, OSError) as exc:
        log.error("stack failed to start", error=str(exc))
        code = 1
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
