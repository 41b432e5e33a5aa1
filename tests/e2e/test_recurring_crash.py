"""Kill the invoicing service (SIGKILL) in the middle of a month's renewals, restart it, and
run again: every renewal is charged exactly once in the ledger, and the invoicing service's
charge rows agree."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from invoicing_service.recurring.domain import month_start, next_period, period_of
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.e2e
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="e2e",
                                                    scopes=["operator"])}
ACCOUNTS = 20
ITEMS_PER_ACCOUNT = 10
CHARGES_PER_ITEM = 3  # setup and two months


@pytest.fixture(scope="module")
def ledger(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("ledger_service", infra.service_env()).start(
        tmp_path_factory.mktemp("crash-ledger"))
    service.wait_ready()
    yield service
    assert service.stop() == 0, service.logs()


def invoicing(infra: Infra, ledger: ServiceProcess, logs: Path, port: int | None = None
              ) -> ServiceProcess:
    service = ServiceProcess("invoicing_service", infra.service_env(
        LEDGER_URL=ledger.url, RECURRING_MANUAL_CLOCK="true", RECURRING_POLL_INTERVAL_S="3600",
        RECURRING_BATCH_SIZE_MAX="20", RECURRING_CONCURRENCY="4"))
    if port is not None:
        service.port = port
    service.start(logs).wait_ready()
    return service


def fee_count(ledger: ServiceProcess, account: str) -> int:
    page = httpx.get(f"{ledger.url}/v1/accounts/{account}/entries",
                     params={"kind": "fee", "limit": 500}, headers=OPERATOR).json()
    return len(page["items"])


def test_a_renewal_run_killed_half_way_charges_each_renewal_once_after_restart(
        infra: Infra, ledger: ServiceProcess, tmp_path: Path) -> None:
    first = invoicing(infra, ledger, tmp_path)
    accounts = [str(uuid.uuid4()) for _ in range(ACCOUNTS)]
    next_month = next_period(period_of(date.today()))
    starts_on = month_start(next_month)
    for account in accounts:
        assert httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, json={
            "account_id": account, "type": "postpay", "currency": "GBP",
            "credit_limit": "1000.00", "tax": {"country": "GB"}}).status_code == 201
        for n in range(ITEMS_PER_ACCOUNT):
            response = httpx.post(
                f"{first.url}/v1/accounts/{account}/recurring-items",
                headers={**OPERATOR, "Idempotency-Key": f"{account}-{n}"},
                json={"product": "vmn", "quantity": 1, "reference": f"+4477{uuid.uuid4().int % 10**12:012d}",
                      "starts_on": starts_on.isoformat()})
            assert response.status_code == 201, response.text
    as_of = month_start(next_period(next_month))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["response"] = httpx.post(f"{first.url}/v1/recurring-runs", headers=OPERATOR,
                                             json={"as_of": as_of.isoformat()}, timeout=120)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    total = ACCOUNTS * ITEMS_PER_ACCOUNT * CHARGES_PER_ITEM
    deadline = time.monotonic() + 60
    while sum(fee_count(ledger, a) for a in accounts[:3]) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)  # mid-run: some charged, most not
    first.process.wait()
    runner.join()
    assert "error" in outcome, "the run was cut off"
    charged_before = sum(fee_count(ledger, a) for a in accounts)
    assert charged_before < total, "killed before the end"

    second = invoicing(infra, ledger, tmp_path, port=first.port)
    try:
        result = httpx.post(f"{second.url}/v1/recurring-runs", headers=OPERATOR,
                            json={"as_of": as_of.isoformat()}, timeout=120).json()
        assert result["charged"] > 0, result
        for account in accounts:  # every charge row is charged, with one ledger entry each
            page = httpx.get(f"{second.url}/v1/accounts/{account}/recurring-items",
                             headers=OPERATOR).json()
            charges = [c for item in page["items"] for c in item["charges"]]
            assert len(charges) == ITEMS_PER_ACCOUNT * CHARGES_PER_ITEM
            assert {c["status"] for c in charges} == {"charged"}
            assert len({c["entry_id"] for c in charges}) == len(charges)
        again = httpx.post(f"{second.url}/v1/recurring-runs", headers=OPERATOR,
                           json={"as_of": as_of.isoformat()}, timeout=120).json()
        assert again["charged"] == 0
        deadline = time.monotonic() + 30
        while sum(fee_count(ledger, a) for a in accounts) < total \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        for account in accounts:  # each renewal once in the ledger
            assert fee_count(ledger, account) == ITEMS_PER_ACCOUNT * CHARGES_PER_ITEM
            balance = httpx.get(f"{ledger.url}/v1/accounts/{account}/balance",
                                headers=OPERATOR).json()["balance"]
            assert balance == f"-{2 * ITEMS_PER_ACCOUNT * CHARGES_PER_ITEM}.00"
    finally:
        assert second.stop() == 0, second.logs()
