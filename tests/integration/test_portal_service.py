"""The ledger service as a process keeps its projections caught up on its own: what an
operator writes and a producer sends shows up in the statement and usage routes, with their
freshness, and the process still stops cleanly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_service import publish_usage, usage

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops-test",
                                                    scopes=["operator"])}


@pytest.fixture(scope="module")
def service(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess("ledger_service", infra.service_env()).start(
        tmp_path_factory.mktemp("portal-service"))
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.logs()


def until(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_the_running_service_projects_what_it_records(infra: Infra,
                                                      service: ServiceProcess) -> None:
    account = str(uuid.uuid4())
    opened = httpx.post(f"{service.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    granted = httpx.post(f"{service.url}/v1/accounts/{account}/credits", headers=OPERATOR,
                         json={"kind": "purchased", "amount": "5.00", "reason": "test"})
    assert granted.status_code == 201, granted.text
    asyncio.run(publish_usage(infra.nats_url, [
        (f"{account}-u{i}", usage(account, f"{account}-u{i}", quantity=2)) for i in range(3)]))
    portal = {"Authorization": "Bearer " + mint_token(
        DEVELOPMENT_JWT_SECRET, sub="portal", scopes=["portal"], tenant_id=account)}

    def statement() -> Any:
        response = httpx.get(f"{service.url}/v1/accounts/{account}/entries", headers=portal)
        return response if len(response.json().get("items", [])) == 4 else None

    response = until(statement)
    assert response is not None, service.logs()[-3000:]
    kinds = [i["kind"] for i in response.json()["items"]]
    assert kinds == ["usage", "usage", "usage", "grant"]
    assert response.json()["items"][0]["balance_after"] == "4.763"  # 5 - 6 x 0.0395
    assert int(response.headers["X-Projection-Position"]) > 0
    usage_view = httpx.get(f"{service.url}/v1/accounts/{account}/usage", headers=portal).json()
    assert [(i["product"], i["quantity"], i["amount"]) for i in usage_view["items"]] == [
        ("sms", 6, "0.237")]
    csv_text = httpx.get(f"{service.url}/v1/accounts/{account}/entries",
                         headers={**portal, "Accept": "text/csv"}).text
    assert csv_text.count("\n") == 5
