"""The Xero client's transport sends each request in one write (head and body together),
and is otherwise httpx's: answers, keep-alive and errors as before."""

from __future__ import annotations

import httpcore
import httpx
import pytest

from sync_service.app.http_transport import OneWriteTransport

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
          b'{"ok":true}')


class _RecordingStream(httpcore.AsyncMockStream):
    def __init__(self, buffer: list[bytes], writes: list[bytes]) -> None:
        super().__init__(buffer)
        self.writes = writes

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.writes.append(buffer)


class _RecordingBackend(httpcore.AsyncMockBackend):
    """Every connection answers `answers`; every write is recorded."""

    def __init__(self, answers: list[bytes]) -> None:
        super().__init__(answers)
        self.writes: list[bytes] = []
        self.connections = 0

    async def connect_tcp(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        self.connections += 1
        return _RecordingStream(list(self._buffer), self.writes)


def _client(backend: _RecordingBackend) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=5, max_keepalive_connections=5)
    return httpx.AsyncClient(transport=OneWriteTransport(limits=limits,
                                                         network_backend=backend))


async def test_head_and_body_leave_in_one_write() -> None:
    backend = _RecordingBackend([ANSWER])
    async with _client(backend) as client:
        response = await client.put("http://xero.test/api.xro/2.0/Invoices",
                                    content=b'{"Invoices":[{"Type":"ACCREC"}]}',
                                    headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 200 and response.json() == {"ok": True}
    [sent] = backend.writes
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"PUT /api.xro/2.0/Invoices HTTP/1.1")
    assert b"Idempotency-Key: k-1" in head and b"Content-Length: 32" in head
    assert body == b'{"Invoices":[{"Type":"ACCREC"}]}'


async def test_requests_on_a_kept_alive_connection_each_go_whole() -> None:
    backend = _RecordingBackend([ANSWER, ANSWER])
    async with _client(backend) as client:
        for n in range(2):
            await client.post("http://xero.test/x", content=b"body-%d" % n)
    assert backend.connections == 1
    assert [w.endswith(b"body-%d" % n) for n, w in enumerate(backend.writes)] == [True, True]
    assert len(backend.writes) == 2


async def test_a_connection_closed_unanswered_is_an_httpx_transport_error() -> None:
    backend = _RecordingBackend([])  # the server closes without a word
    async with _client(backend) as client:
        with pytest.raises(httpx.TransportError):
            await client.put("http://xero.test/x", content=b"{}")
    assert len(backend.writes) == 1  # the request was sent (whole) before the read failed
