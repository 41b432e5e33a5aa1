"""POST /v1/accounts/{id}/charges: a fee priced by the ledger, charged once per charge key,
refused for a prepay account that cannot cover it (nothing written), shown on the statement
with its reference."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_http import OPERATOR, assert_problem, balance, bearer, opened

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = ServiceProcess("ledger_service", infra.service_env()).start(
        tmp_path_factory.mktemp("ledger-charges"))
    service.wait_ready()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client
    assert service.stop() == 0


def statement(api: httpx.Client, account: str, count: int, **params: str) -> list[dict[str, str]]:
    """The statement once the projection has caught up with `count` entries."""
    deadline = time.monotonic() + 10
    while True:
        items = api.get(f"/v1/accounts/{account}/entries", params=params,
                        headers=OPERATOR).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items  # type: ignore[no-any-return]
        time.sleep(0.1)


def charge(api: httpx.Client, account: str, key: str, **body: object) -> httpx.Response:
    payload = {"charge_key": key, "product": "vmn", "quantity": 1,
               "reference": "+447700900123", "period": "2026-12", **body}
    return api.post(f"/v1/accounts/{account}/charges", json=payload,
                    headers={**OPERATOR, "Idempotency-Key": key})


def test_a_monthly_fee_is_priced_from_the_catalogue_and_shows_on_the_statement(
        api: httpx.Client) -> None:
    account = opened(api, credit="10.00")
    key = f"recurring:{uuid.uuid4()}:2026-12"
    response = charge(api, account, key)
    assert response.status_code == 201, response.text
    fee = response.json()
    assert (fee["kind"], fee["unit_price"], fee["amount"], fee["reference"]) == (
        "fee", "2.00", "2.00", "+447700900123")
    assert balance(api, account) == "8.00"
    newest = statement(api, account, 2)[0]
    assert (newest["kind"], newest["amount"], newest["reference"]) == (
        "fee", "-2.00", "+447700900123")
    assert newest["entry_id"] == fee["entry_id"]


def test_a_charge_key_is_charged_once_whatever_the_idempotency_key(api: httpx.Client) -> None:
    account = opened(api, credit="10.00")
    key = f"recurring:{uuid.uuid4()}:setup"
    body = {"charge_key": key, "product": "vmn_setup", "quantity": 1, "reference": "KW1"}
    first = api.post(f"/v1/accounts/{account}/charges", json=body,
                     headers={**OPERATOR, "Idempotency-Key": "a-" + key})
    again = api.post(f"/v1/accounts/{account}/charges", json=body,
                     headers={**OPERATOR, "Idempotency-Key": "b-" + key})
    assert first.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert balance(api, account) == "8.00"


def test_a_prorated_fee_uses_the_account_override(api: httpx.Client) -> None:
    account = opened(api, credit="10.00")
    assert api.put(f"/v1/accounts/{account}/prices/vmn", json={"unit_price": "3.10"},
                   headers=OPERATOR).status_code == 200
    response = charge(api, account, f"recurring:{uuid.uuid4()}:2026-12",
                      proration={"days": 17, "days_in_period": 31})
    assert response.status_code == 201, response.text
    assert (response.json()["unit_price"], response.json()["amount"]) == ("3.10", "1.70")


def test_a_prepay_account_that_cannot_cover_a_fee_is_refused_and_nothing_is_written(
        api: httpx.Client) -> None:
    account = opened(api, credit="1.00")
    key = f"recurring:{uuid.uuid4()}:2026-12"
    problem = assert_problem(charge(api, account, key), 422)
    assert str(problem["type"]).endswith("insufficient-funds")
    assert balance(api, account) == "1.00"
    assert statement(api, account, 1)[0]["kind"] == "grant"
    assert api.get(f"/v1/accounts/{account}/entries", params={"kind": "fee"},
                   headers=OPERATOR).json()["items"] == []
    # topped up, the same key goes through: the refusal left no trace
    assert api.post(f"/v1/accounts/{account}/credits", headers=OPERATOR,
                    json={"kind": "purchased", "amount": "5.00", "reason": "top-up"}
                    ).status_code == 201
    assert charge(api, account, key).status_code == 201
    assert balance(api, account) == "4.00"


def test_a_postpay_fee_is_charged_past_the_credit_limit(api: httpx.Client) -> None:
    body = {"account_id": str(uuid.uuid4()), "type": "postpay", "currency": "GBP",
            "credit_limit": "1.00", "tax": {"country": "GB"}}
    assert api.post("/v1/accounts", json=body, headers=OPERATOR).status_code == 201
    account = str(body["account_id"])
    assert charge(api, account, f"recurring:{uuid.uuid4()}:2026-12",
                  quantity=2).status_code == 201
    assert balance(api, account) == "-4.00"


@pytest.mark.parametrize("body", [
    {"product": "no_such_product"},
    {"quantity": 0},
    {"period": "2026-13"},
    {"proration": {"days": 40, "days_in_period": 31}},
])
def test_bad_charges_are_refused_with_problems(api: httpx.Client, body: dict[str, object]) -> None:
    account = opened(api, credit="10.00")
    response = charge(api, account, f"recurring:{uuid.uuid4()}:2026-12", **body)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert balance(api, account) == "10.00"


def test_charges_need_an_operator_and_an_idempotency_key(api: httpx.Client) -> None:
    account = opened(api, credit="10.00")
    body = {"charge_key": "k1", "product": "vmn", "quantity": 1}
    portal = bearer("portal", tenant=account)
    assert api.post(f"/v1/accounts/{account}/charges", json=body,
                    headers={**portal, "Idempotency-Key": "k1"}).status_code == 403
    assert api.post(f"/v1/accounts/{account}/charges", json=body,
                    headers=OPERATOR).status_code == 400


def test_a_batch_charges_each_fee_on_its_own_once_per_key(api: httpx.Client) -> None:
    rich, poor = opened(api, credit="10.00"), opened(api, credit="1.00")
    missing = str(uuid.uuid4())
    rich_key, poor_key = f"recurring:{uuid.uuid4()}:2026-12", f"recurring:{uuid.uuid4()}:2026-12"

    def fee(account: str, key: str, **body: object) -> dict[str, object]:
        return {"account_id": account, "charge_key": key, "product": "vmn", "quantity": 1,
                "reference": "+447700900123", "period": "2026-12", **body}

    batch = {"charges": [fee(rich, rich_key), fee(poor, poor_key), fee(missing, "k-missing"),
                         fee(rich, "k-unknown", product="nope"), fee(rich, rich_key)]}
    response = api.post("/v1/charges", json=batch, headers=OPERATOR)
    assert response.status_code == 200, response.text
    outcomes = [(r["outcome"], r.get("problem_type")) for r in response.json()["results"]]
    assert outcomes == [("charged", None), ("refused", "insufficient-funds"),
                        ("rejected", "account-not-found"), ("rejected", "unknown-product"),
                        ("charged", None)]
    first = response.json()["results"][0]["fee"]
    assert response.json()["results"][4]["fee"] == first
    assert (balance(api, rich), balance(api, poor)) == ("8.00", "1.00")
    again = api.post("/v1/charges", json={"charges": [fee(rich, rich_key)]}, headers=OPERATOR)
    assert again.json()["results"][0]["fee"] == first
    single = charge(api, rich, rich_key)  # the per-account route knows the key too
    assert single.json() == first
    assert balance(api, rich) == "8.00"


def test_an_accounts_fees_of_a_batch_are_each_a_statement_line(api: httpx.Client) -> None:
    """One FeesCharged event per account per batch; the statement still has a line per fee,
    with its own entry id, amount, balance after and reference."""
    account = opened(api, credit="10.00")
    keys = [f"recurring:{uuid.uuid4()}:2026-12" for _ in range(3)]
    batch = {"charges": [{"account_id": account, "charge_key": key, "product": "vmn",
                          "quantity": 1, "reference": f"+44770090012{n}", "period": "2026-12"}
                         for n, key in enumerate(keys)]}
    response = api.post("/v1/charges", json=batch, headers=OPERATOR)
    fees = [r["fee"] for r in response.json()["results"]]
    assert [f["balance_after"] for f in fees] == ["8.00", "6.00", "4.00"]
    items = statement(api, account, 4)
    lines = [(i["entry_id"], i["kind"], i["amount"], i["balance_after"], i["reference"])
             for i in items if i["kind"] == "fee"]
    assert sorted(lines) == sorted((f["entry_id"], "fee", "-2.00", f["balance_after"],
                                    f["reference"]) for f in fees)
