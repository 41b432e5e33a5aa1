"""The ledger's HTTP API: idempotent writes, problem+json for bad input with nothing written,
and tenant isolation (another tenant's account is 404, never 403)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_service import publish_usage, usage

pytestmark = pytest.mark.integration


def bearer(*scopes: str, tenant: str | None = None) -> dict[str, str]:
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="http-test", scopes=list(scopes),
                       tenant_id=tenant)
    return {"Authorization": f"Bearer {token}"}


OPERATOR = bearer("operator")


@pytest.fixture(scope="module")
def api(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = ServiceProcess("ledger_service", infra.service_env()).start(
        tmp_path_factory.mktemp("ledger-http"))
    service.wait_ready()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client
    assert service.stop() == 0


def open_body(**overrides: object) -> dict[str, object]:
    return {"account_id": str(uuid.uuid4()), "type": "prepay", "currency": "GBP",
            "tax": {"country": "GB"}, **overrides}


def opened(api: httpx.Client, credit: str | None = "10.00") -> str:
    body = open_body()
    assert api.post("/v1/accounts", json=body, headers=OPERATOR).status_code == 201
    if credit:
        response = api.post(f"/v1/accounts/{body['account_id']}/credits", headers=OPERATOR,
                            json={"kind": "purchased", "amount": credit, "reason": "test"})
        assert response.status_code == 201, response.text
    return str(body["account_id"])


def balance(api: httpx.Client, account: str) -> str:
    response = api.get(f"/v1/accounts/{account}/balance", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return str(response.json()["balance"])


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"].startswith("https://")
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


def test_open_is_idempotent_and_a_reused_key_with_another_body_is_409(api: httpx.Client) -> None:
    body = open_body()
    headers = {**OPERATOR, "Idempotency-Key": f"open-{body['account_id']}"}
    first = api.post("/v1/accounts", json=body, headers=headers)
    again = api.post("/v1/accounts", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = api.post("/v1/accounts", json={**body, "currency": "EUR"}, headers=headers)
    assert_problem(other, 409)
    assert api.get(f"/v1/accounts/{body['account_id']}", headers=OPERATOR).json()["currency"] == "GBP"


def test_opening_an_existing_account_without_a_key_is_409(api: httpx.Client) -> None:
    body = open_body()
    assert api.post("/v1/accounts", json=body, headers=OPERATOR).status_code == 201
    assert_problem(api.post("/v1/accounts", json=body, headers=OPERATOR), 409)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (open_body(tax=None), "tax"),
        (open_body(currency="gbp"), "currency"),
        (open_body(type="platinum"), "type"),
        (open_body(credit_limit=12.5), "credit_limit"),
        (open_body(low_balance_threshold="1.1234567"), "low_balance_threshold"),
    ],
)
def test_malformed_open_is_400_with_the_field_and_writes_nothing(
    api: httpx.Client, body: dict[str, object], field: str
) -> None:
    problem = assert_problem(api.post("/v1/accounts", json=body, headers=OPERATOR), 400)
    assert any(field in str(e["field"]) for e in problem["errors"])  # type: ignore[attr-defined,union-attr]
    assert_problem(api.get(f"/v1/accounts/{body['account_id']}", headers=OPERATOR), 404)


def test_bad_json_and_missing_auth_and_wrong_scope(api: httpx.Client) -> None:
    bad_json = api.post("/v1/accounts", content=b"{nope", headers={**OPERATOR,
                                                                    "content-type": "application/json"})
    assert_problem(bad_json, 400)
    assert_problem(api.post("/v1/accounts", json=open_body()), 401)
    portal = bearer("portal", tenant=str(uuid.uuid4()))
    assert_problem(api.post("/v1/accounts", json=open_body(), headers=portal), 403)


def test_credits_and_adjustments_validate_and_write_nothing_when_refused(api: httpx.Client) -> None:
    account = opened(api)
    cases = [
        ("credits", {"kind": "purchased", "amount": 5.0, "reason": "float"}, 400),
        ("credits", {"kind": "gift", "amount": "5.00", "reason": "kind"}, 400),
        ("credits", {"kind": "bonus", "amount": "0", "reason": "zero"}, 400),
        ("credits", {"kind": "bonus", "amount": "5.00", "reason": "past",
                     "expires_at": "2020-01-01T00:00:00Z"}, 422),
        ("adjustments", {"direction": "credit", "amount": "1.00", "memo": "too short"}, 400),
        ("adjustments", {"direction": "credit", "amount": "1.00", "memo": "x" * 501}, 400),
        ("adjustments", {"direction": "sideways", "amount": "1.00", "memo": "a valid memo"}, 400),
        ("refunds", {"entry_id": str(uuid.uuid4()), "reason": "no such entry"}, 404),
    ]
    for route, body, status in cases:
        assert_problem(api.post(f"/v1/accounts/{account}/{route}", json=body, headers=OPERATOR),
                       status)
    assert balance(api, account) == "10.00"
    missing = api.post(f"/v1/accounts/{uuid.uuid4()}/credits", headers=OPERATOR,
                       json={"kind": "bonus", "amount": "1.00", "reason": "nobody"})
    assert_problem(missing, 404)


def test_adjustment_records_the_memo_and_the_actor_and_moves_the_balance(api: httpx.Client) -> None:
    account = opened(api)
    response = api.post(f"/v1/accounts/{account}/adjustments", headers=OPERATOR,
                        json={"direction": "debit", "amount": "2.50",
                              "memo": "Duplicate campaign charge reversed"})
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == "-2.50" and response.json()["balance_after"] == "7.50"
    assert balance(api, account) == "7.50"


def test_opening_records_the_operator_who_opened_the_account(api: httpx.Client) -> None:
    account = opened(api, credit=None)
    response = api.get(f"/v1/audit/accounts/{account}/events", headers=OPERATOR)
    assert response.status_code == 200, response.text
    first = response.json()["items"][0]
    assert first["topic"] == "Opened" and first["data"]["actor"] == "http-test"


def test_a_portal_token_reads_its_own_account_only(api: httpx.Client) -> None:
    mine, theirs = opened(api), opened(api)
    portal = bearer("portal", tenant=mine)
    assert api.get(f"/v1/accounts/{mine}/balance", headers=portal).status_code == 200
    assert api.get(f"/v1/accounts/{mine}", headers=portal).status_code == 200
    for path in (f"/v1/accounts/{theirs}/balance", f"/v1/accounts/{theirs}",
                 f"/v1/accounts/{theirs}/balance?as_of=2030-01-01T00:00:00Z"):
        assert_problem(api.get(path, headers=portal), 404)
    assert_problem(api.post(f"/v1/accounts/{mine}/credits", headers=portal,
                            json={"kind": "bonus", "amount": "1.00", "reason": "self-serve"}), 403)


def test_balance_as_of_answers_from_the_log(api: httpx.Client) -> None:
    account = opened(api, credit=None)
    before_grant = datetime.now(UTC)
    time.sleep(0.05)
    api.post(f"/v1/accounts/{account}/credits", headers=OPERATOR,
             json={"kind": "bonus", "amount": "3.00", "reason": "welcome"})
    then = api.get(f"/v1/accounts/{account}/balance",
                   params={"as_of": before_grant.isoformat()}, headers=OPERATOR)
    assert then.status_code == 200 and then.json()["balance"] == "0.00"
    assert balance(api, account) == "3.00"
    before_open = (before_grant - timedelta(days=1)).isoformat()
    assert_problem(api.get(f"/v1/accounts/{account}/balance", params={"as_of": before_open},
                           headers=OPERATOR), 404)


def test_a_price_override_wins_over_the_catalogue(api: httpx.Client, infra: Infra) -> None:
    account = opened(api)
    put = api.put(f"/v1/accounts/{account}/prices/sms", headers=OPERATOR,
                  json={"unit_price": "0.02", "reason": "negotiated"})
    assert put.status_code == 200, put.text
    asyncio.run(publish_usage(infra.nats_url, [(f"ovr-{account}", usage(account, f"ovr-{account}"))]))
    deadline = time.monotonic() + 20
    while balance(api, account) != "9.98" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert balance(api, account) == "9.98"


def test_refund_of_a_usage_entry_over_http_never_exceeds_the_debit(
    api: httpx.Client, infra: Infra
) -> None:
    from ledger_service.domain.postings import usage_entry_id

    account = opened(api)
    asyncio.run(publish_usage(infra.nats_url, [(f"rfh-{account}",
                                                usage(account, f"rfh-{account}", quantity=10))]))
    deadline = time.monotonic() + 20
    while balance(api, account) != "9.605" and time.monotonic() < deadline:
        time.sleep(0.2)
    entry = usage_entry_id(uuid.UUID(account), f"rfh-{account}")
    too_much = api.post(f"/v1/accounts/{account}/refunds", headers=OPERATOR,
                        json={"entry_id": entry, "amount": "0.50", "reason": "too much"})
    assert_problem(too_much, 422)
    ok = api.post(f"/v1/accounts/{account}/refunds", headers=OPERATOR,
                  json={"entry_id": entry, "reason": "carrier outage"})
    assert ok.status_code == 201, ok.text
    assert balance(api, account) == "10.00"


def test_an_account_keeps_its_name_and_a_patch_changes_only_what_it_names(api: httpx.Client) -> None:
    body = open_body(name="Acme Messaging Ltd", low_balance_threshold="5.00")
    assert api.post("/v1/accounts", json=body, headers=OPERATOR).status_code == 201
    path = f"/v1/accounts/{body['account_id']}"
    assert api.get(path, headers=OPERATOR).json()["name"] == "Acme Messaging Ltd"
    patched = api.patch(path, headers=OPERATOR, json={"name": "Acme Group", "tier": "enterprise"})
    assert patched.status_code == 200, patched.text
    view = api.get(path, headers=OPERATOR).json()
    assert (view["name"], view["tier"], view["low_balance_threshold"]) == (
        "Acme Group", "enterprise", "5.00")
    converted = api.patch(path, headers=OPERATOR, json={"type": "postpay", "credit_limit": "50.00"})
    assert converted.status_code == 200, converted.text
    assert converted.json()["type"] == "postpay" and converted.json()["credit_limit"] == "50.00"
    assert_problem(api.patch(path, headers=OPERATOR, json={"type": "trial"}), 409)
