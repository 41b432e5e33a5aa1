"""A JSON body is held to its contract strictly: a string where the contract says boolean, or
a number where it says date-time, is 400 problem+json; Litestar alone converted them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import pytest
from litestar import post
from litestar.params import JSONBody
from litestar.testing import TestClient

from services.http import JwtVerifier, create_app


class Grant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reverse_charge: bool
    expires_at: datetime | None = None


@post("/grants", sync_to_thread=False)
def grant(data: JSONBody[Grant]) -> dict[str, Any]:
    return {"reverse_charge": data.reverse_charge}


@pytest.fixture
def client() -> Any:
    app = create_app(title="t", version="1", route_handlers=[grant], readiness_checks={},
                     auth=JwtVerifier(secret="x" * 32))
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize("body", [
    {"reverse_charge": "true"},
    {"reverse_charge": 1},
    {"reverse_charge": False, "expires_at": 0},
    {"reverse_charge": False, "expires_at": "2026-12-01"},
])
def test_a_body_the_contract_refuses_is_400(client: Any, body: dict[str, Any]) -> None:
    response = client.post("/grants", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["source"] == "body"


def test_a_body_the_contract_takes_is_handled(client: Any) -> None:
    response = client.post("/grants", json={"reverse_charge": True,
                                            "expires_at": "2026-12-01T00:00:00Z"})
    assert response.status_code == 201 and response.json() == {"reverse_charge": True}


def test_the_field_is_named_as_a_dotted_path(client: Any) -> None:
    response = client.post("/grants", json={"reverse_charge": "no"})
    assert response.json()["errors"][0]["field"] == "reverse_charge"


class Days(msgspec.Struct, frozen=True, kw_only=True):
    days: int


@post("/days", sync_to_thread=False)
def days(data: JSONBody[Days]) -> dict[str, Any]:
    return {"days": data.days}


@pytest.mark.parametrize(("value", "status"), [(28, 201), (28.0, 201), (28.5, 400), ("28", 400)])
def test_an_integral_number_written_with_a_point_is_the_integer_json_says_it_is(
        value: Any, status: int) -> None:
    app = create_app(title="t", version="1", route_handlers=[days], readiness_checks={},
                     auth=JwtVerifier(secret="x" * 32))
    with TestClient(app) as client:
        response = client.post("/days", json={"days": value})
    assert response.status_code == status, response.text
    if status == 201:
        assert response.json() == {"days": 28}
