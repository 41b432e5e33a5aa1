"""Every error an HTTP service answers is RFC 9457 problem+json, never a stack trace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import pytest
from litestar import get, post
from litestar.params import FromQuery, JSONBody
from litestar.testing import TestClient

from services.http import (
    DEVELOPMENT_JWT_SECRET,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    REQUEST_BODY_BYTES_MAX,
    JwtVerifier,
    create_app,
)


class Tax(msgspec.Struct):
    country: Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")]


class OpenAccount(msgspec.Struct):
    owner: Annotated[str, msgspec.Meta(min_length=1)]
    credit_limit: int
    tax: Tax


class InsufficientFundsError(Exception):
    pass


class HoldExpiredError(InsufficientFundsError):
    pass


@post("/accounts")
async def open_account(data: JSONBody[OpenAccount]) -> dict[str, str]:
    return {"owner": data.owner}


@get("/entries")
async def list_entries(limit: FromQuery[int]) -> dict[str, int]:
    return {"limit": limit}


@get("/debit")
async def debit() -> None:
    raise InsufficientFundsError("balance 1.00 GBP is below 5.00 GBP")


@get("/hold")
async def capture_hold() -> None:
    raise HoldExpiredError("hold h-1 expired")


@get("/crash")
async def crash() -> None:
    raise RuntimeError("password=hunter2 in a stack frame")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    app = create_app(
        title="problems-test",
        version="0.0.1",
        route_handlers=[open_account, list_entries, debit, capture_hold, crash],
        readiness_checks={},
        auth=JwtVerifier(DEVELOPMENT_JWT_SECRET),
        exception_statuses={
            InsufficientFundsError: (422, "insufficient-funds"),
            HoldExpiredError: (409, "hold-expired"),
        },
    )
    with TestClient(app=app) as test_client:
        yield test_client


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"{PROBLEM_TYPE_BASE}{slug}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def errors_by_field(body: dict[str, Any]) -> dict[str, str]:
    return {error["field"]: error["message"] for error in body["errors"]}


def test_unknown_route_is_a_404_problem(client: TestClient[Any]) -> None:
    assert_problem(client.get("/no/such/route"), 404, "not-found")


def test_wrong_method_is_a_405_problem_with_allow_header(client: TestClient[Any]) -> None:
    response = client.delete("/entries")

    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


def test_invalid_json_is_a_400_malformed_body_problem(client: TestClient[Any]) -> None:
    response = client.post(
        "/accounts", content=b'{"owner": ', headers={"content-type": "application/json"}
    )

    assert_problem(response, 400, "malformed-body")


def test_wrong_types_name_each_field(client: TestClient[Any]) -> None:
    response = client.post(
        "/accounts", json={"owner": "acme", "credit_limit": "lots", "tax": {"country": "GB"}}
    )

    body = assert_problem(response, 400, "validation-error")
    assert errors_by_field(body) == {"credit_limit": "Expected `int`, got `str`"}


def test_nested_constraint_violation_names_the_dotted_field(client: TestClient[Any]) -> None:
    response = client.post(
        "/accounts", json={"owner": "acme", "credit_limit": 1, "tax": {"country": "gb"}}
    )

    body = assert_problem(response, 400, "validation-error")
    assert list(errors_by_field(body)) == ["tax.country"]


def test_missing_field_is_named_in_errors(client: TestClient[Any]) -> None:
    response = client.post("/accounts", json={"owner": "acme", "credit_limit": 1})

    body = assert_problem(response, 400, "validation-error")
    assert body["errors"] == [
        {"field": "tax", "message": "Object missing required field `tax`", "source": "body"}
    ]


def test_body_of_the_wrong_shape_blames_the_body(client: TestClient[Any]) -> None:
    response = client.post("/accounts", json=["not", "an", "object"])

    body = assert_problem(response, 400, "validation-error")
    assert list(errors_by_field(body)) == ["body"]


def test_bad_and_missing_query_parameters_are_field_errors(client: TestClient[Any]) -> None:
    bad = assert_problem(client.get("/entries?limit=many"), 400, "validation-error")
    missing = assert_problem(client.get("/entries"), 400, "validation-error")

    assert bad["errors"][0]["field"] == "limit"
    assert bad["errors"][0]["source"] == "query"
    assert missing["errors"][0]["field"] == "limit"


def test_domain_error_maps_to_its_status_and_slug(client: TestClient[Any]) -> None:
    body = assert_problem(client.get("/debit"), 422, "insufficient-funds")

    assert body["title"] == "Insufficient funds"
    assert body["detail"] == "balance 1.00 GBP is below 5.00 GBP"


def test_most_specific_domain_error_mapping_wins(client: TestClient[Any]) -> None:
    assert_problem(client.get("/hold"), 409, "hold-expired")


def test_unhandled_exception_is_a_generic_500_without_trace(client: TestClient[Any]) -> None:
    response = client.get("/crash")

    body = assert_problem(response, 500, "internal-error")
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]


def test_invalid_exception_status_mapping_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not an error status"):
        create_app(
            title="t",
            version="1",
            route_handlers=[],
            readiness_checks={},
            auth=JwtVerifier(DEVELOPMENT_JWT_SECRET),
            exception_statuses={InsufficientFundsError: (200, "fine")},
        )


def test_oversized_body_is_a_413_problem(client: TestClient[Any]) -> None:
    oversized = b'{"owner": "' + b"x" * REQUEST_BODY_BYTES_MAX + b'"}'

    response = client.post(
        "/accounts", content=oversized, headers={"content-type": "application/json"}
    )

    assert_problem(response, 413, "content-too-large")
