"""``make run``: the whole stack on one machine, in order, and stopped in reverse order.

1. PostgreSQL and NATS: the ones in DATABASE_URL / NATS_URL, or embedded ones under .run/.
2. Each service's migrations, one after another (``python -m <service> migrate``).
3. The four services as separate processes, each waited for until /readyz answers 200.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

from services.database import redact_url
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


@dataclass(slots=True)
class Running:
    entry: ServiceEntry
    port: int
    process: subprocess.Popen[bytes]


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.env = passthrough_environment()
        self.nats: NatsProcess | NatsCluster | None = None
        self.postgres: object | None = None
        self.running: list[Running] = []
        self.stop_requested = threading.Event()

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
        # The ledger's signed anchors go beside the stack's data (ledgerctl reads them there).
        self.env.setdefault("ANCHOR_DIR", str(self.run_dir / "anchors"))
        log.info("infrastructure ready", database=redact_url(database_url), nats=nats_url)

    def migrate(self) -> None:
        for entry in SERVICES:
            subprocess.run(
                [sys.executable, "-m", entry.package, "migrate"], env=self.env, check=True
            )

    def start_services(self) -> None:
        for entry in SERVICES:
            port = int(self.env.get(entry.port_variable, entry.port_default))
            process = subprocess.Popen(
                [sys.executable, "-m", entry.package, "serve"],
                env=self.env,
                start_new_session=True,  # the runner, not the terminal, decides when it stops
            )
            self.running.append(Running(entry, port, process))
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
        lines.append("Mint a token: .venv/bin/billing-token --scope operator")
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), flush=True)

    def supervise(self) -> int:
        """Wait for a stop signal or for a service to die; a dead service stops the stack."""
        while not self.stop_requested.wait(0.5):
            for service in self.running:
                code = service.process.poll()
                if code is not None:
                    log.error("service exited; stopping the stack",
                              service=service.entry.package, code=code)
                    return 1
        return 0

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
