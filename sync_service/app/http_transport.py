"""An httpx transport that sends each HTTP/1.1 request in one write.

httpcore writes a request's head and its body separately: two system calls and two TCP
segments per call. Over loopback (the bench's fake Xero) each send also pays for waking the
receiver, and the two sends were a quarter of the sync process's CPU per call. The stream
below holds what httpcore writes until it reads (the answer, which always follows a whole
request), so head and body leave together. Everything else is httpx's own transport:
the same pool, limits, timeouts and exceptions (a failed send surfaces from the first read
as the same `httpx.WriteError`, a `TransportError` like any dropped connection).
"""

# httpcore's stream and backend interfaces take `timeout` parameters: ours must match them.
# ruff: noqa: ASYNC109

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx


class _CoalescingStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._pending: list[bytes] = []
        self._write_timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
            self._write_timeout = timeout

    async def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            await self._stream.write(data, self._write_timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush()
        return await self._stream.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._pending.clear()  # a request never answered is never sent half
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        await self._flush()
        return _CoalescingStream(await self._stream.start_tls(ssl_context, server_hostname,
                                                              timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CoalescingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None
                          ) -> httpcore.AsyncNetworkStream:
        return _CoalescingStream(await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address,
            socket_options=socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        return _CoalescingStream(await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class OneWriteTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (HTTP/1.1, TLS verified), each request sent in one write."""

    def __init__(self, *, limits: httpx.Limits,
                 network_backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        """`network_backend`: the sockets underneath (httpcore's AnyIO one unless a test
        gives another)."""
        super().__init__(limits=limits)
        # httpx builds its httpcore pool without a way to pass a network backend; this is
        # the same pool as httpx's own for a transport without a proxy, with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CoalescingBackend(network_backend or httpcore.AnyIOBackend()),
        )
