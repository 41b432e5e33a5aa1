"""A UK number on a prepay account, end to end across the ledger, payments and invoicing
services (processes) over real PostgreSQL and NATS, with an in-process SMTP server:

the number is charged its setup fee and first month when it starts, renews on the 1st, is
refused when the account is empty (past due, and the email arrives), the customer tops up
through the fake Stripe, the missed month is charged once and the number resumes; the portal
reads the item's charges and the alerts sent."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from invoicing_service.recurring.domain import month_start, next_period, period_of
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.stripe import SECRET_KEY, FakeStripe, event, sign_payload
from tests.integration.service_process import ServiceProcess
from tests.integration.test_invoicing_mail import Recorder, free_port

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_e2e_recurring_secret"
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="e2e",
                                                    scopes=["operator"])}


def portal(account: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(
        DEVELOPMENT_JWT_SECRET, sub="customer", scopes=["portal"], tenant_id=account)}


class Stack:
    def __init__(self, ledger: ServiceProcess, payments: ServiceProcess,
                 invoicing: ServiceProcess, stripe: FakeStripe, mailbox: Recorder) -> None:
        self.ledger, self.payments, self.invoicing = ledger, payments, invoicing
        self.stripe, self.mailbox = stripe, mailbox


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp("e2e-recurring")
    mailbox = Recorder()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    with FakeStripe() as stripe:
        ledger = ServiceProcess("ledger_service", infra.service_env()).start(logs)
        payments = ServiceProcess("payments_service", infra.service_env(
            STRIPE_API_BASE=stripe.url, STRIPE_SECRET_KEY=SECRET_KEY,
            STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, OUTBOX_POLL_INTERVAL_S="0.2",
        )).start(logs)
        invoicing = ServiceProcess("invoicing_service", infra.service_env(
            LEDGER_URL=ledger.url, SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port),
            SMTP_SECURITY="none", EMAIL_POLL_INTERVAL_S="0.2",
            RECURRING_MANUAL_CLOCK="true", RECURRING_POLL_INTERVAL_S="3600",
            ALERT_MIN_INTERVAL_S="0",
        ))
        try:
            ledger.wait_ready()
            invoicing.start(logs).wait_ready()
            payments.wait_ready()
            yield Stack(ledger, payments, invoicing, stripe, mailbox)
        finally:
            for service in (payments, invoicing, ledger):
                if service.process is not None:
                    assert service.stop() == 0, service.logs()
            smtp.stop()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def balance(stack: Stack, account: str) -> str:
    return str(ok(httpx.get(f"{stack.ledger.url}/v1/accounts/{account}/balance",
                            headers=OPERATOR))["balance"])


def run_renewals(stack: Stack, as_of: date) -> dict[str, Any]:
    result: dict[str, Any] = ok(httpx.post(f"{stack.invoicing.url}/v1/recurring-runs",
                                           headers=OPERATOR, json={"as_of": as_of.isoformat()},
                                           timeout=60))
    return result


def item_of(stack: Stack, account: str) -> dict[str, Any]:
    page = ok(httpx.get(f"{stack.invoicing.url}/v1/accounts/{account}/recurring-items",
                        headers=portal(account)))
    (item,) = page["items"]
    return item  # type: ignore[no-any-return]


def top_up(stack: Stack, account: str, amount: str) -> None:
    checkout = ok(httpx.post(f"{stack.payments.url}/v1/checkout/topups", headers=OPERATOR,
                             timeout=30, json={"account_id": account, "amount": amount}), 201)
    paid = event("checkout.session.completed", stack.stripe.paid_session(
        checkout["session_id"], f"pi_{uuid.uuid4().hex[:24]}"))
    body = json.dumps(paid).encode()
    response = httpx.post(f"{stack.payments.url}/v1/webhooks/stripe", content=body, timeout=30,
                          headers={"Stripe-Signature": sign_payload(body, WEBHOOK_SECRET),
                                   "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_a_prepay_number_renews_is_refused_when_empty_and_resumes_after_a_top_up(
        stack: Stack) -> None:
    account = str(uuid.uuid4())
    ok(httpx.post(f"{stack.ledger.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"},
        "low_balance_threshold": "5.00"}), 201)
    ok(httpx.post(f"{stack.ledger.url}/v1/accounts/{account}/credits", headers=OPERATOR,
                  json={"kind": "purchased", "amount": "10.00", "reason": "opening credit"}), 201)
    ok(httpx.put(f"{stack.invoicing.url}/v1/accounts/{account}/notification-settings",
                 headers=portal(account), json={"billing_email": "ops@acme.example"}))

    # the number starts on the 1st of this month: setup and the whole month at once
    this_month = period_of(datetime.now(UTC).date())
    starts_on = month_start(this_month)
    created = ok(httpx.post(
        f"{stack.invoicing.url}/v1/accounts/{account}/recurring-items",
        headers={**OPERATOR, "Idempotency-Key": f"number-{account}"}, timeout=60,
        json={"product": "vmn", "quantity": 1, "reference": "+447700900123",
              "starts_on": starts_on.isoformat()}), 201)
    assert [(c["period"], c["status"], c["amount"]) for c in created["charges"]] == [
        ("setup", "charged", "2.00"), (this_month, "charged", "2.00")]
    assert balance(stack, account) == "6.00"

    # the 1st of next month: renewed once, however often the scheduler runs
    renewal_month = next_period(this_month)
    assert run_renewals(stack, month_start(renewal_month))["charged"] == 1
    assert run_renewals(stack, month_start(renewal_month))["charged"] == 0
    assert balance(stack, account) == "4.00"  # crossed below 5.00: a low-balance email
    def fees() -> list[dict[str, Any]]:
        return list(ok(httpx.get(f"{stack.ledger.url}/v1/accounts/{account}/entries",
                                 params={"kind": "fee"}, headers=portal(account)))["items"])

    statement = eventually(lambda: len(fees()) >= 3 and fees(), "three fees on the statement")
    assert {e["reference"] for e in statement} == {"+447700900123"}

    # the account is emptied; the month after is refused: past due, and the email arrives
    ok(httpx.post(f"{stack.ledger.url}/v1/accounts/{account}/adjustments", headers=OPERATOR,
                  json={"direction": "debit", "amount": "4.00",
                        "memo": "spent on messages elsewhere"}), 201)
    refused_month = next_period(renewal_month)
    assert run_renewals(stack, month_start(refused_month))["refused"] == 1
    assert balance(stack, account) == "0.00"
    assert item_of(stack, account)["status"] == "past_due"
    past_due = eventually(lambda: [m for m in stack.mailbox.messages
                                   if "could not be charged" in str(m["Subject"])],
                          "the past-due email")
    assert past_due[0]["To"] == "ops@acme.example"
    assert "+447700900123" in past_due[0].get_content()

    # a top-up through Stripe: the ledger credits it, invoicing retries, charged once
    top_up(stack, account, "20.00")
    resumed = eventually(lambda: item_of(stack, account)["status"] == "active"
                         and item_of(stack, account), "the item to resume")
    charged = {c["period"]: c for c in resumed["charges"]}
    assert charged[refused_month]["status"] == "charged"
    assert balance(stack, account) == "18.00"
    time.sleep(1)  # nothing more arrives
    assert balance(stack, account) == "18.00"
    assert len(eventually(lambda: len(fees()) >= 4 and fees(), "four fees")) == 4

    # the portal reads what was sent
    alerts = eventually(lambda: ok(httpx.get(
        f"{stack.invoicing.url}/v1/accounts/{account}/alerts", headers=portal(account)))[
        "items"] if len(stack.mailbox.messages) >= 2 else None, "two alerts")
    assert {a["kind"] for a in alerts} >= {"renewal_past_due", "balance_low"}
    assert all(a["recipient"] == "ops@acme.example" for a in alerts)
    other = str(uuid.uuid4())
    assert httpx.get(f"{stack.invoicing.url}/v1/accounts/{account}/alerts",
                     headers=portal(other)).status_code == 404
