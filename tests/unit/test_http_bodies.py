"""The HTTP kernel takes JSON bodies only, UTF-8 only, and not nested without bound.

Issue 14, items 3 and 7: text/plain, XML, form and unlabelled bodies were parsed as JSON and
accepted; invalid UTF-8 inside a JSON string and 100,000 levels of nesting were 500s. Now
415 and 400 problem+json, for every service, whether the route parses the body itself
(webhooks) or through Litestar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar import Request, get, patch, post
from litestar.params import JSONBody
from litestar.testing import TestClient

from services.http import (
    DEVELOPMENT_JWT_SECRET,
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    JwtVerifier,
    create_app,
)
from services.http.bodies import NESTING_DEPTH_MAX, is_json_media_type, nesting_depth


class Credit(msgspec.Struct):
    reason: str
    tags: list[Any] = []


@post("/credits")
async def grant(data: JSONBody[Credit]) -> dict[str, str]:
    return {"reason": data.reason}


@patch("/accounts")
async def change(data: JSONBody[dict[str, Any]]) -> dict[str, int]:
    return {"fields": len(data)}


@post("/webhook", status_code=200)
async def webhook(request: Request[Any, Any, Any]) -> dict[str, Any]:
    # Like the Stripe webhook: reads the raw body and parses it itself.
    body = await request.body()
    return {"keys": sorted(msgspec.json.decode(body))}


@post("/close", status_code=200)
async def close() -> dict[str, bool]:
    return {"closed": True}


@get("/balance")
async def balance() -> dict[str, str]:
    return {"balance": "1.00"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    app = create_app(title="bodies-test", version="0.0.1",
                     route_handlers=[grant, change, webhook, close, balance],
                     readiness_checks={}, auth=JwtVerifier(DEVELOPMENT_JWT_SECRET))
    with TestClient(app=app, raise_server_exceptions=False) as test_client:
        yield test_client


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"{PROBLEM_TYPE_BASE}{slug}"
    assert body["status"] == status
    return body


BODY = json.dumps({"reason": "welcome"}).encode()


@pytest.mark.parametrize("path", ["/credits", "/webhook"])
@pytest.mark.parametrize("content_type", [
    "text/plain", "application/xml", "text/xml", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1", "", None,
])
def test_a_body_not_labelled_json_is_415(client: TestClient[Any], path: str,
                                          content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(path, content=BODY, headers=headers)
    problem = assert_problem(response, 415, "unsupported-media-type")
    assert response.headers["accept-post"] == "application/json"
    assert "application/json" in problem["detail"]


def test_a_patch_not_labelled_json_is_415_with_accept_patch(client: TestClient[Any]) -> None:
    response = client.patch("/accounts", content=b"name=x",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415, "unsupported-media-type")
    assert response.headers["accept-patch"] == "application/json"


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
    'application/json; charset="utf-8"', "application/merge-patch+json",
])
def test_json_with_or_without_parameters_is_accepted(client: TestClient[Any],
                                                     content_type: str) -> None:
    for path in ("/credits", "/webhook"):
        response = client.post(path, content=BODY, headers={"content-type": content_type})
        assert response.status_code in (200, 201), response.text


def test_routes_without_a_body_are_unaffected(client: TestClient[Any]) -> None:
    assert client.post("/close").status_code == 200
    assert client.post("/close", headers={"content-type": "text/plain"}).status_code == 200
    assert client.get("/balance", headers={"content-type": "text/plain"}).status_code == 200
    # Unknown routes and methods keep their own answers, whatever the body.
    assert_problem(client.post("/nowhere", content=b"x", headers={"content-type": "text/plain"}),
                   404, "not-found")


INVALID_UTF8 = b'{"reason": "caf\xc3\x28 \xff"}'
DEEP = b'{"reason": "x", "tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
UNCLOSED = b'{"reason": "x", "tags": ' + b"[" * 100_000


@pytest.mark.parametrize("path", ["/credits", "/webhook", "/accounts"])
@pytest.mark.parametrize("body", [INVALID_UTF8, DEEP, UNCLOSED],
                         ids=["invalid-utf8", "nested-100000", "unclosed-100000"])
def test_invalid_utf8_and_deep_nesting_are_400_not_500(client: TestClient[Any], path: str,
                                                       body: bytes) -> None:
    send = client.patch if path == "/accounts" else client.post
    response = send(path, content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed-body")


def test_nesting_up_to_the_bound_is_accepted(client: TestClient[Any]) -> None:
    tags = b"[" * (NESTING_DEPTH_MAX - 1) + b"]" * (NESTING_DEPTH_MAX - 1)
    body = b'{"reason": "x", "tags": ' + tags + b"}"
    ok = client.post("/credits", content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 201, ok.text
    deeper = b'{"reason": "x", "tags": [' + tags + b"]}"
    assert_problem(client.post("/credits", content=deeper,
                               headers={"content-type": "application/json"}),
                   400, "malformed-body")


def test_nesting_depth_and_media_types() -> None:
    assert nesting_depth(1) == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
    assert is_json_media_type("application/problem+json")
    assert not is_json_media_type("application/jsonp")
    assert not is_json_media_type("text/json")


def test_a_token_whose_subject_holds_a_control_character_is_refused() -> None:
    # `sub` is the actor written into events and statement rows: the same text rule applies.
    import jwt

    from services.http.auth import TokenRejected, principal_from_claims

    with pytest.raises(TokenRejected, match="control characters"):
        principal_from_claims({"sub": "ops\x00evil", "scope": "operator"})
    assert principal_from_claims({"sub": "ops@example.test"}).sub == "ops@example.test"
    verifier = JwtVerifier(DEVELOPMENT_JWT_SECRET)
    token = jwt.encode({"sub": "a\x07b", "exp": 4_000_000_000}, DEVELOPMENT_JWT_SECRET,
                       algorithm="HS256")
    with pytest.raises(TokenRejected):
        verifier.verify(token)
