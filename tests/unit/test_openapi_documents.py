"""The services' OpenAPI documents say what the services do (no service needs to run: the
document is built with the app). schemathesis checks the same against running services in
tests/integration/test_openapi_conformance.py; these pin the fixes one by one."""

from __future__ import annotations

from typing import Any

import pytest
from litestar._openapi.plugin import OpenAPIPlugin

from ledger_service.main import SPEC as LEDGER
from payments_service.main import SPEC as PAYMENTS
from services.runtime import ServiceSpec, build_app, load

ENV = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "NATS_URL": "nats://127.0.0.1:1"}
WRITES = {  # the ledger's write routes and the body each answers
    ("post", "/v1/accounts"): ("201", "AccountView"),
    ("patch", "/v1/accounts/{account_id}"): ("200", "AccountView"),
    ("post", "/v1/accounts/{account_id}/close"): ("200", "AccountView"),
    ("post", "/v1/accounts/{account_id}/credits"): ("201", "GrantView"),
    ("post", "/v1/accounts/{account_id}/adjustments"): ("201", "PostedView"),
    ("post", "/v1/accounts/{account_id}/refunds"): ("201", "PostedView"),
    ("put", "/v1/accounts/{account_id}/prices/{product}"): ("200", "PriceOverrideView"),
}


@pytest.fixture(scope="module")
def ledger() -> dict[str, Any]:
    return openapi_of(LEDGER)


def openapi_of(spec: ServiceSpec) -> dict[str, Any]:
    app = build_app(spec, load(spec, ENV))
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in doc["paths"].items()
            for method, op in item.items() if isinstance(op, dict) and "responses" in op]


@pytest.mark.parametrize(("method", "path"), list(WRITES))
def test_each_ledger_write_documents_its_body_and_idempotency_key(
    ledger: dict[str, Any], method: str, path: str,
) -> None:
    op = ledger["paths"][path][method]
    status, view = WRITES[(method, path)]
    schema = op["responses"][status]["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{view}"}
    key = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["schema"]["maxLength"] == 128
    assert key["schema"]["pattern"]
    for code in ("400", "401", "403", "409", "422", *(("404",) if "{" in path else ())):
        assert "application/problem+json" in op["responses"][code]["content"], code


def test_optional_constrained_fields_keep_their_constraints(ledger: dict[str, Any]) -> None:
    amount = ledger["components"]["schemas"]["RefundRequest"]["properties"]["amount"]
    assert any("pattern" in choice for choice in amount["anyOf"])


def test_cursors_say_what_a_cursor_is(ledger: dict[str, Any]) -> None:
    for method, path, op in operations(ledger):
        for parameter in op.get("parameters", ()):
            if parameter["name"] == "cursor":
                assert "next_cursor" in parameter["description"], (method, path)


@pytest.mark.parametrize("spec", [LEDGER, PAYMENTS], ids=lambda s: s.name)
def test_every_route_with_a_path_parameter_documents_404(spec: ServiceSpec) -> None:
    for method, path, op in operations(openapi_of(spec)):
        if "{" in path:
            assert "404" in op["responses"], (method, path)
