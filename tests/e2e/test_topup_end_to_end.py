"""A top-up end to end, across two services over real PostgreSQL and NATS: the payments
service takes a signed Stripe webhook delivered three times, and the ledger credits exactly
100.00 (net of the 20.00 VAT) once; a later charge.refunded takes it back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.stripe import SECRET_KEY, FakeStripe, event, sign_payload
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_e2e_endpoint_secret"
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="e2e",
                                                    scopes=["operator"])}


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ServiceProcess, ServiceProcess, FakeStripe]]:
    logs: Path = tmp_path_factory.mktemp("e2e")
    with FakeStripe() as stripe:
        ledger = ServiceProcess("ledger_service", infra.service_env()).start(logs)
        payments = ServiceProcess("payments_service", infra.service_env(
            STRIPE_API_BASE=stripe.url, STRIPE_SECRET_KEY=SECRET_KEY,
            STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, OUTBOX_POLL_INTERVAL_S="0.2",
        )).start(logs)
        try:
            ledger.wait_ready()
            payments.wait_ready()
            yield ledger, payments, stripe
        finally:
            assert payments.stop() == 0, payments.logs()
            assert ledger.stop() == 0, ledger.logs()


def deliver(payments: ServiceProcess, payload: dict[str, object]) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(f"{payments.url}/v1/webhooks/stripe", content=body, timeout=30, headers={
        "Stripe-Signature": sign_payload(body, WEBHOOK_SECRET), "Content-Type": "application/json"})


def ledger_balance(ledger: ServiceProcess, account: str) -> str:
    response = httpx.get(f"{ledger.url}/v1/accounts/{account}/balance", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return str(response.json()["balance"])


def wait_for_balance(ledger: ServiceProcess, account: str, expected: str) -> None:
    deadline = time.monotonic() + 30
    while ledger_balance(ledger, account) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ledger_balance(ledger, account) == expected


def test_a_topup_delivered_three_times_credits_the_ledger_once_and_a_refund_takes_it_back(
    stack: tuple[ServiceProcess, ServiceProcess, FakeStripe],
) -> None:
    ledger, payments, stripe = stack
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text

    checkout = httpx.post(f"{payments.url}/v1/checkout/topups", headers=OPERATOR, timeout=30,
                          json={"account_id": account, "amount": "100.00"})
    assert checkout.status_code == 201, checkout.text
    assert (checkout.json()["amount"], checkout.json()["vat_amount"]) == ("100.00", "20.00")
    session_id = checkout.json()["session_id"]
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    completed = event("checkout.session.completed", stripe.paid_session(session_id, intent))
    for _ in range(3):  # Stripe retries; each delivery is signed afresh
        assert deliver(payments, completed).status_code == 200
    wait_for_balance(ledger, account, "100.00")
    time.sleep(1)  # nothing more arrives
    assert ledger_balance(ledger, account) == "100.00"

    charge = {"id": f"ch_{uuid.uuid4().hex[:24]}", "object": "charge", "amount": 12_000,
              "amount_refunded": 12_000, "refunded": True, "currency": "gbp",
              "payment_intent": intent}
    refunded = event("charge.refunded", charge)
    assert deliver(payments, refunded).status_code == 200
    assert deliver(payments, refunded).status_code == 200
    wait_for_balance(ledger, account, "0.00")
    time.sleep(1)
    assert ledger_balance(ledger, account) == "0.00"
