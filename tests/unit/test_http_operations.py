"""/healthz, /readyz, /metrics and /schema/openapi.json, served by every service."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

from litestar import get
from litestar.params import FromPath
from litestar.testing import TestClient

from services.http import (
    BEARER_SECURITY,
    DEVELOPMENT_JWT_SECRET,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    JwtVerifier,
    ReadinessCheck,
    create_app,
    problem_responses,
    requires_scope,
)

TIMEOUT_S = 0.5


async def healthy() -> None:
    pass


async def refusing() -> None:
    raise ConnectionRefusedError(
        "connection to postgresql://billing:s3cret-pw@db:5432/ledger failed\nsecond line"
    )


async def hanging() -> None:
    await asyncio.sleep(60)


@get("/things/{thing_id:int}")
async def read_thing(thing_id: FromPath[int]) -> dict[str, int]:
    return {"thing_id": thing_id}


@get(
    "/secrets",
    guards=[requires_scope("operator")],
    security=BEARER_SECURITY,
    responses=problem_responses(401, 403),
)
async def read_secrets() -> dict[str, str]:
    return {}


def client_for(checks: Mapping[str, ReadinessCheck]) -> TestClient[Any]:
    app = create_app(
        title="ops-test",
        version="9.8.7",
        route_handlers=[read_thing, read_secrets],
        readiness_checks=checks,
        auth=JwtVerifier(DEVELOPMENT_JWT_SECRET),
        readiness_timeout_s=TIMEOUT_S,
    )
    return TestClient(app=app)


def test_healthz_answers_ok_even_when_dependencies_fail() -> None:
    with client_for({"database": refusing}) as client:
        response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_every_check_passes() -> None:
    with client_for({"database": healthy, "nats": healthy}) as client:
        response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "nats": "ok"}}


def test_readyz_is_503_naming_the_failed_check_without_credentials() -> None:
    with client_for({"database": refusing, "nats": healthy}) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["type"] == f"{PROBLEM_TYPE_BASE}not-ready"
    assert "database" in body["detail"]
    assert body["checks"]["nats"] == "ok"
    assert body["checks"]["database"].startswith("ConnectionRefusedError: ")
    assert "s3cret-pw" not in response.text
    assert "second line" not in response.text


def test_readyz_times_out_a_hanging_check_and_runs_checks_concurrently() -> None:
    checks = {"nats": hanging, "search": hanging, "cache": hanging, "database": healthy}
    with client_for(checks) as client:
        started = time.perf_counter()
        response = client.get("/readyz")
        elapsed_s = time.perf_counter() - started

    assert response.status_code == 503
    assert response.json()["checks"] == {
        "nats": f"timed out after {TIMEOUT_S:g} s",
        "search": f"timed out after {TIMEOUT_S:g} s",
        "cache": f"timed out after {TIMEOUT_S:g} s",
        "database": "ok",
    }
    # Three hanging checks in sequence would take three times the timeout.
    assert elapsed_s < 3 * TIMEOUT_S


def requests_total(metrics_text: str, method: str, route: str, status: int) -> float:
    line = re.search(
        rf'^http_requests_total\{{method="{method}",route="{re.escape(route)}",'
        rf'status="{status}"\}} (\S+)$',
        metrics_text,
        re.MULTILINE,
    )
    return float(line.group(1)) if line else 0.0


def test_metrics_count_requests_by_route_template_method_and_status() -> None:
    with client_for({}) as client:
        before = requests_total(client.get("/metrics").text, "GET", "/things/{thing_id}", 200)
        client.get("/things/1")
        client.get("/things/2")
        metrics = client.get("/metrics")

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert requests_total(metrics.text, "GET", "/things/{thing_id}", 200) == before + 2
    assert "http_request_duration_seconds_bucket" in metrics.text
    assert "/things/1" not in metrics.text


def test_metrics_count_unmatched_routes_under_one_label() -> None:
    with client_for({}) as client:
        before = requests_total(client.get("/metrics").text, "GET", "unmatched", 404)
        client.get("/random/scanner/probe")
        after = requests_total(client.get("/metrics").text, "GET", "unmatched", 404)

    assert after == before + 1


def test_openapi_document_has_title_version_and_bearer_scheme() -> None:
    with client_for({}) as client:
        response = client.get("/schema/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["info"] == {"title": "ops-test", "version": "9.8.7"}
    assert document["components"]["securitySchemes"]["BearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["BearerToken"]["description"],
    }
    secrets = document["paths"]["/secrets"]["get"]
    assert secrets["security"] == [{"BearerToken": []}]
    assert PROBLEM_MEDIA_TYPE in secrets["responses"]["401"]["content"]
    assert "security" not in document["paths"]["/healthz"]["get"]
    assert "/metrics" not in document["paths"]
