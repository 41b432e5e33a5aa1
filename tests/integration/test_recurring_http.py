"""The recurring-items and alerts routes of the invoicing service (a process): bad input is
problem+json with nothing written, operators write, portal tokens read their own account
only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from invoicing_service.recurring.cli import app
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops",
                                                    scopes=["operator"])}
LATER = "2099-01-15"  # starts far ahead: nothing is charged, no ledger needed


def portal(account: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(
        DEVELOPMENT_JWT_SECRET, sub="customer", scopes=["portal"], tenant_id=account)}


@pytest.fixture(scope="module")
def api(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = ServiceProcess("invoicing_service", infra.service_env(
        LEDGER_URL="http://127.0.0.1:9", RECURRING_POLL_INTERVAL_S="3600")).start(
        tmp_path_factory.mktemp("invoicing-http"))
    service.wait_ready()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client
    assert service.stop() == 0, service.logs()


def create(api: httpx.Client, account: str, key: str | None = None,
           **body: Any) -> httpx.Response:
    payload = {"product": "vmn", "quantity": 1, "reference": f"+4477{uuid.uuid4().int % 10**12:012d}",
               "starts_on": LATER, **body}
    return api.post(f"/v1/accounts/{account}/recurring-items", json=payload,
                    headers={**OPERATOR, "Idempotency-Key": key or uuid.uuid4().hex})


def assert_problem(response: httpx.Response, status: int, type_end: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if type_end:
        assert response.json()["type"].endswith(type_end), response.text


def items(api: httpx.Client, account: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/accounts/{account}/recurring-items", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


@pytest.mark.parametrize("body, status, type_end", [
    ({"product": "nope"}, 422, "unknown-product"),
    ({"quantity": 0}, 400, None),
    ({"quantity": -3}, 400, None),
    ({"ends_on": "2099-01-14"}, 422, "invalid-item"),
    ({"starts_on": "not a date"}, 400, None),
])
def test_bad_items_are_refused_with_problems_and_nothing_written(
        api: httpx.Client, body: dict[str, Any], status: int, type_end: str | None) -> None:
    account = str(uuid.uuid4())
    assert_problem(create(api, account, **body), status, type_end)
    assert items(api, account) == []


def test_a_second_live_item_with_the_same_reference_is_409(api: httpx.Client) -> None:
    account, reference = str(uuid.uuid4()), f"KW{uuid.uuid4().hex[:8]}"
    assert create(api, account, product="shortcode_keyword", reference=reference
                  ).status_code == 201
    assert_problem(create(api, str(uuid.uuid4()), product="shortcode_keyword",
                          reference=reference), 409, "reference-in-use")


def test_creation_is_idempotent_and_needs_a_key_and_an_operator(api: httpx.Client) -> None:
    account = str(uuid.uuid4())
    body = {"product": "vmn", "quantity": 2, "reference": "+447700900999", "starts_on": LATER}
    first = create(api, account, key="create-1", **body)
    again = create(api, account, key="create-1", **body)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert_problem(create(api, account, key="create-1", **{**body, "quantity": 3}), 409,
                   "idempotency-key-reused")
    assert len(items(api, account)) == 1
    no_key = api.post(f"/v1/accounts/{account}/recurring-items", json=body, headers=OPERATOR)
    assert_problem(no_key, 400)
    by_portal = api.post(f"/v1/accounts/{account}/recurring-items", json=body,
                         headers={**portal(account), "Idempotency-Key": "p-1"})
    assert_problem(by_portal, 403)


def test_cancel_and_reads_by_the_portal(api: httpx.Client) -> None:
    account = str(uuid.uuid4())
    item = create(api, account).json()
    cancelled = api.post(f"/v1/recurring-items/{item['item_id']}/cancel", json={"at": "now"},
                         headers=OPERATOR)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert_problem(api.post(f"/v1/recurring-items/{uuid.uuid4()}/cancel", json={"at": "now"},
                            headers=OPERATOR), 404)
    assert_problem(api.post(f"/v1/recurring-items/{item['item_id']}/cancel",
                            json={"at": "tomorrow"}, headers=OPERATOR), 400)
    own = api.get(f"/v1/accounts/{account}/recurring-items", headers=portal(account))
    assert own.status_code == 200 and own.json()["items"][0]["item_id"] == item["item_id"]
    other = str(uuid.uuid4())
    assert_problem(api.get(f"/v1/accounts/{account}/recurring-items", headers=portal(other)),
                   404)
    assert_problem(api.get(f"/v1/accounts/{account}/alerts", headers=portal(other)), 404)
    assert api.get(f"/v1/accounts/{account}/alerts", headers=portal(account)).json() == {
        "items": []}


def test_notification_settings_round_trip(api: httpx.Client) -> None:
    account = str(uuid.uuid4())
    url = f"/v1/accounts/{account}/notification-settings"
    assert api.get(url, headers=portal(account)).json()["stored"] is False
    saved = api.put(url, headers=portal(account), json={
        "balance_low": False, "billing_email": "ops@acme.example",
        "extra_recipients": ["cfo@acme.example"]})
    assert saved.status_code == 200, saved.text
    view = api.get(url, headers=OPERATOR).json()
    assert (view["stored"], view["balance_low"], view["renewal_past_due"]) == (True, False, True)
    assert view["extra_recipients"] == ["cfo@acme.example"]
    assert_problem(api.put(url, headers=portal(account), json={"billing_email": "nope"}), 400)


def test_a_manual_clock_run_is_refused_unless_the_service_allows_it(api: httpx.Client) -> None:
    assert_problem(api.post("/v1/recurring-runs", json={"as_of": "2099-02-01"},
                            headers=OPERATOR), 403)
    assert api.post("/v1/recurring-runs", json={}, headers=OPERATOR).status_code == 200


def test_the_operator_cli_adds_lists_and_cancels(api: httpx.Client,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICING_URL", str(api.base_url))
    account = str(uuid.uuid4())
    runner = CliRunner()
    added = runner.invoke(app, ["add", account, "shortcode_keyword", "PIZZA" + account[:4],
                                "--starts-on", LATER])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["list", account, "--json"])
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.output)["items"]
    assert item["product"] == "shortcode_keyword"
    changed = runner.invoke(app, ["change", item["item_id"], "--quantity", "2",
                                  "--effective", "now"])
    assert changed.exit_code == 0, changed.output
    assert runner.invoke(app, ["cancel", item["item_id"], "--at", "now"]).exit_code == 0
    refused = runner.invoke(app, ["add", account, "nope", "X1", "--starts-on", LATER])
    assert refused.exit_code == 1 and "unknown-product" in refused.output


def change(api: httpx.Client, item_id: str, key: str | None = "change-1",
           **body: Any) -> httpx.Response:
    headers = {**OPERATOR, **({"Idempotency-Key": key} if key else {})}
    return api.post(f"/v1/recurring-items/{item_id}/change", json=body, headers=headers)


@pytest.mark.parametrize("body, key, status, type_end", [
    ({"product": "nope", "effective": "now"}, "k", 422, "unknown-product"),
    ({"quantity": 1, "effective": "now"}, "k", 422, "invalid-item"),  # the same plan
    ({"effective": "now"}, "k", 422, "invalid-item"),  # nothing to change
    ({"quantity": 0, "effective": "now"}, "k", 400, None),
    ({"quantity": -2, "effective": "now"}, "k", 400, None),
    ({"quantity": 2, "effective": "soon"}, "k", 400, None),
    ({"quantity": 2, "effective": "now"}, None, 400, None),  # no Idempotency-Key
])
def test_bad_plan_changes_are_refused_with_problems_and_nothing_written(
        api: httpx.Client, body: dict[str, Any], key: str | None, status: int,
        type_end: str | None) -> None:
    account = str(uuid.uuid4())
    item = create(api, account).json()
    assert_problem(change(api, item["item_id"], key, **body), status, type_end)
    (after,) = items(api, account)
    assert (after["product"], after["quantity"], after["plan_changes"]) == ("vmn", 1, [])


def test_a_plan_change_of_a_cancelled_or_unknown_item_is_refused(api: httpx.Client) -> None:
    account = str(uuid.uuid4())
    item = create(api, account).json()
    assert api.post(f"/v1/recurring-items/{item['item_id']}/cancel", json={"at": "now"},
                    headers=OPERATOR).status_code == 200
    assert_problem(change(api, item["item_id"], quantity=2, effective="now"), 409,
                   "item-cancelled")
    assert_problem(change(api, str(uuid.uuid4()), quantity=2, effective="now"), 404)
    portal_token = portal(account)
    assert api.post(f"/v1/recurring-items/{item['item_id']}/change", json={"quantity": 2},
                    headers={**portal_token, "Idempotency-Key": "p"}).status_code == 403


def test_a_plan_change_before_the_start_applies_at_once_and_replays_by_key(
        api: httpx.Client) -> None:
    account = str(uuid.uuid4())
    item = create(api, account).json()
    first = change(api, item["item_id"], "up", product="shortcode_keyword", quantity=3,
                   effective="now")
    assert first.status_code == 200, first.text
    assert (first.json()["product"], first.json()["quantity"]) == ("shortcode_keyword", 3)
    again = change(api, item["item_id"], "up", product="shortcode_keyword", quantity=3,
                   effective="now")
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert_problem(change(api, item["item_id"], "up", quantity=4, effective="now"), 409,
                   "idempotency-key-reused")
    later = change(api, item["item_id"], "down", quantity=1)  # the product's default
    assert later.status_code == 200, later.text
    assert later.json()["pending_change"]["quantity"] == 1
