"""Request and correlation ids on every response, in the log context, and in the access log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from litestar import Litestar, get
from litestar.testing import TestClient
from structlog.testing import capture_logs

from services.http import (
    DEVELOPMENT_JWT_SECRET,
    JwtVerifier,
    create_app,
    current_correlation_id,
    current_request_id,
    mint_token,
)
from services.http.middleware import RequestContextMiddleware

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@get("/context")
async def context() -> dict[str, Any]:
    return {
        "log_context": structlog.contextvars.get_contextvars(),
        "correlation_id": current_correlation_id(),
        "request_id": current_request_id(),
    }


@get("/crash")
async def crash() -> None:
    raise RuntimeError("boom")


def build_app() -> Litestar:
    return create_app(
        title="context-test",
        version="0.0.1",
        route_handlers=[context, crash],
        readiness_checks={},
        auth=JwtVerifier(DEVELOPMENT_JWT_SECRET),
    )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    with TestClient(app=build_app()) as test_client:
        yield test_client


def test_request_id_is_generated_when_absent(client: TestClient[Any]) -> None:
    response = client.get("/context")

    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_valid_request_id_is_echoed(client: TestClient[Any]) -> None:
    response = client.get("/context", headers={"X-Request-Id": "req-42.abc_DEF"})

    assert response.headers["x-request-id"] == "req-42.abc_DEF"


@pytest.mark.parametrize("unacceptable", [b"has space", b"x" * 129, "caf\u00e9".encode(), b""])
def test_unacceptable_request_id_is_replaced(
    client: TestClient[Any], unacceptable: bytes
) -> None:
    response = client.get("/context", headers={b"X-Request-Id": unacceptable})

    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


@pytest.mark.parametrize(("path", "status"), [("/nowhere", 404), ("/crash", 500)])
def test_error_responses_carry_the_request_id(
    client: TestClient[Any], path: str, status: int
) -> None:
    response = client.get(path, headers={"X-Request-Id": "trace-me"})

    assert response.status_code == status
    assert response.headers["x-request-id"] == "trace-me"
    assert response.json()["request_id"] == "trace-me"


def test_405_carries_the_request_id(client: TestClient[Any]) -> None:
    response = client.post("/context", headers={"X-Request-Id": "trace-405"})

    assert response.status_code == 405
    assert response.headers["x-request-id"] == "trace-405"


def test_correlation_id_defaults_to_the_request_id(client: TestClient[Any]) -> None:
    response = client.get("/context", headers={"X-Request-Id": "r-1"})

    assert response.headers["x-correlation-id"] == "r-1"
    assert response.json()["correlation_id"] == "r-1"


def test_given_correlation_id_is_kept_and_readable_by_publishers(
    client: TestClient[Any],
) -> None:
    response = client.get("/context", headers={"X-Correlation-Id": "saga-9"})

    assert response.headers["x-correlation-id"] == "saga-9"
    assert response.json()["correlation_id"] == "saga-9"


def test_ids_method_and_path_are_bound_in_the_log_context(client: TestClient[Any]) -> None:
    response = client.get("/context", headers={"X-Request-Id": "r-2", "X-Correlation-Id": "c-2"})

    assert response.json()["log_context"] == {
        "request_id": "r-2",
        "correlation_id": "c-2",
        "method": "GET",
        "path": "/context",
    }


async def test_log_context_is_restored_after_the_request() -> None:
    # Called in this task, not through a client, so a leak would be visible here.
    seen: dict[str, Any] = {}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.update(structlog.contextvars.get_contextvars())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    scope: Any = {
        "type": "http", "method": "GET", "path": "/x", "headers": [(b"x-request-id", b"r-3")]
    }
    structlog.contextvars.bind_contextvars(service="ledger_service")
    try:
        await RequestContextMiddleware(inner)(scope, _no_body, send)

        assert seen["request_id"] == "r-3"
        assert seen["service"] == "ledger_service"
        assert structlog.contextvars.get_contextvars() == {"service": "ledger_service"}
        assert current_correlation_id() is None
        assert current_request_id() is None
    finally:
        structlog.contextvars.clear_contextvars()


async def _no_body() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_one_access_line_per_request(client: TestClient[Any]) -> None:
    with capture_logs() as logs:
        client.get("/context?limit=3")

    access = [entry for entry in logs if entry["event"] == "http.request"]
    assert len(access) == 1
    assert access[0]["method"] == "GET"
    assert access[0]["path"] == "/context"
    assert access[0]["status"] == 200
    assert isinstance(access[0]["duration_ms"], float)


def test_authorization_header_never_reaches_the_log(client: TestClient[Any]) -> None:
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="op", scopes=["operator"])

    with capture_logs() as logs:
        client.get("/crash", headers={"Authorization": f"Bearer {token}"})

    assert {entry["event"] for entry in logs} >= {"http.unhandled_exception", "http.request"}
    assert token not in repr(logs)
    assert "authorization" not in repr(logs).lower()


def test_unhandled_exception_is_logged_at_error_with_its_traceback(
    client: TestClient[Any],
) -> None:
    with capture_logs() as logs:
        client.get("/crash")

    [crash_line] = [entry for entry in logs if entry["event"] == "http.unhandled_exception"]
    assert crash_line["log_level"] == "error"
    assert "RuntimeError: boom" in crash_line["traceback"]
