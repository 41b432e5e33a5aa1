"""Embedded nats-server start-up on a busy machine: a port found free may be bound by
another process before nats-server binds it. The server then exits at once while the port
still answers, and a start-up that only waited for the port to answer took the dead node for
a live one: a "3-node cluster" of two, which refuses every 3-replica stream ("no suitable
peers for placement"), the intermittent failure of the cluster fault test in loaded runs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import embedded
from services.embedded import PortTaken, free_port, start_nats, start_nats_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_cluster_node_whose_port_is_taken_is_not_taken_for_started(
        tmp_path: Path, taken_port: int) -> None:
    client_ports = [free_port(), free_port(), taken_port]
    cluster_ports = [free_port() for _ in range(3)]
    (tmp_path / "nats-cluster.ports").write_text(
        " ".join(str(p) for p in client_ports + cluster_ports))
    with pytest.raises(PortTaken, match="address already in use"):
        start_nats_cluster(tmp_path)
    # the nodes that did start were stopped again: nothing is left behind
    assert servers_using(tmp_path) == []


def servers_using(folder: Path) -> list[int]:
    """Pids of running processes whose command line names `folder` (a node's store)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(
        tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = iter([taken_port])
    real_free_port = embedded.free_port

    def racing_free_port(preferred: int | None = None) -> int:
        # the first port handed out is bound by someone else by the time nats-server binds
        return next(chosen, None) or real_free_port(preferred)

    monkeypatch.setattr(embedded, "free_port", racing_free_port)
    server = start_nats(tmp_path)
    try:
        assert server.process.poll() is None
        assert not server.url.endswith(f":{taken_port}")
    finally:
        server.stop()
