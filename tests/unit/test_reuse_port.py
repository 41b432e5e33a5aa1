"""HTTP_REUSE_PORT: several processes of a service can listen on one port."""

from __future__ import annotations

import socket

from services.runtime import reuse_port_socket
from services.settings import ServiceSettings, load_settings


def test_two_listeners_share_a_port_and_both_accept() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the kernel hands the connection to one of them
    finally:
        first.close()
        second.close()


def reuse_port(environ: dict[str, str]) -> bool:
    return load_settings(ServiceSettings, service_name="ledger_service", http_port_default=8001,
                         environ=environ).http_reuse_port


def test_reuse_port_is_off_unless_asked_for() -> None:
    environ = {"DATABASE_URL": "postgresql://x/y", "NATS_URL": "nats://x:4222"}
    assert not reuse_port(environ)
    assert reuse_port({**environ, "LEDGER_HTTP_REUSE_PORT": "true"})
