"""Request context: request and correlation ids, structlog binding, access log, metrics.

Plain ASGI middleware wrapped around the whole Litestar application rather than Litestar route
middleware, because route middleware does not run when routing fails (404, 405) and every
response must carry its request id.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import cast

import structlog
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from services.http.metrics import UNMATCHED_ROUTE, record_request

REQUEST_ID_HEADER = "X-Request-Id"
CORRELATION_ID_HEADER = "X-Correlation-Id"

# Same alphabet as idempotency keys: 1-128 visible ASCII characters, no spaces.
_ACCEPTED_ID = re.compile(rb"[\x21-\x7e]{1,128}")
# Probes and scrapes arrive every few seconds; at info they would drown the access log.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_access_log = structlog.get_logger("services.http.access")


def current_request_id() -> str | None:
    """The id of the request being served by this task, if any."""
    return _request_id.get()


def current_correlation_id() -> str | None:
    """The correlation id of the request being served, for publishers to forward downstream."""
    return _correlation_id.get()


def accepted_id(raw: bytes | None) -> str | None:
    if raw is None or not _ACCEPTED_ID.fullmatch(raw):
        return None
    return raw.decode("ascii")


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key.lower() == name), None)


@contextmanager
def _bound(request_id: str, correlation_id: str, method: str, path: str) -> Iterator[None]:
    request_token = _request_id.set(request_id)
    correlation_token = _correlation_id.set(correlation_id)
    try:
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, correlation_id=correlation_id, method=method, path=path
        ):
            yield
    finally:
        _correlation_id.reset(correlation_token)
        _request_id.reset(request_token)


class RequestContextMiddleware:
    """Outermost ASGI layer of every service's HTTP application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accepted_id(_header(scope, b"x-request-id")) or uuid.uuid4().hex
        correlation_id = accepted_id(_header(scope, b"x-correlation-id")) or request_id
        method, path = cast("HTTPScope", scope)["method"], scope["path"]
        stamping_send = _IdStampingSend(send, request_id, correlation_id)
        started = time.perf_counter()
        with _bound(request_id, correlation_id, method, path):
            try:
                await self.app(scope, receive, stamping_send)
            finally:
                duration_s = time.perf_counter() - started
                # Litestar sets the template only once routing succeeded.
                route = scope.get("path_template") or UNMATCHED_ROUTE
                record_request(method=method, route=route, status=stamping_send.status,
                               duration_s=duration_s)
                _log_access(method, path, stamping_send.status, duration_s)


class _IdStampingSend:
    """`send` that stamps the id headers on the response and remembers its status."""

    def __init__(self, send: Send, request_id: str, correlation_id: str) -> None:
        self._send = send
        self._id_headers = [
            (b"x-request-id", request_id.encode("ascii")),
            (b"x-correlation-id", correlation_id.encode("ascii")),
        ]
        # What the access log says if the application dies before answering.
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if name.lower() not in (b"x-request-id", b"x-correlation-id")
            ]
            message = cast("Message", {**message, "headers": [*headers, *self._id_headers]})
        await self._send(message)


def _log_access(method: str, path: str, status: int, duration_s: float) -> None:
    # Deliberately no headers: the Authorization header must never reach the log.
    log = _access_log.debug if path in _QUIET_PATHS else _access_log.info
    log("http.request", method=method, path=path, status=status,
        duration_ms=round(duration_s * 1000, 2))
