"""A month's invoicing end to end, across the ledger, invoicing and payments over real
PostgreSQL and NATS: usage recorded by the ledger for a GB postpay account and a German
business (valid VAT number) reaches invoicing only through ledger.v1.events.*; the billing
run issues one invoice each (UK VAT 20% and reverse charge); the GB invoice paid through a
(fake) Stripe checkout, its webhook delivered twice, is marked paid once and settles the
ledger's deficit once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from contracts.subjects import USAGE_RECORDED
from contracts.usage import UsageRecorded
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.stripe import SECRET_KEY, FakeStripe, event, sign_payload
from tests.integration.invoicing_fixtures import eventually, query
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.e2e
WEBHOOK_SECRET = "whsec_e2e_invoicing_secret"
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="e2e",
                                                    scopes=["operator"])}
LAST_MONTH = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ServiceProcess, ServiceProcess, ServiceProcess, FakeStripe]]:
    logs: Path = tmp_path_factory.mktemp("e2e-invoicing")
    with FakeStripe() as stripe:
        ledger = ServiceProcess("ledger_service", infra.service_env()).start(logs)
        invoicing = ServiceProcess("invoicing_service", infra.service_env(
            OUTBOX_POLL_INTERVAL_S="0.2")).start(logs)
        payments = ServiceProcess("payments_service", infra.service_env(
            STRIPE_API_BASE=stripe.url, STRIPE_SECRET_KEY=SECRET_KEY,
            STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, OUTBOX_POLL_INTERVAL_S="0.2",
        )).start(logs)
        try:
            for service in (ledger, invoicing, payments):
                service.wait_ready()
            yield ledger, invoicing, payments, stripe
        finally:
            assert payments.stop() == 0, payments.logs()
            assert invoicing.stop() == 0, invoicing.logs()
            assert ledger.stop() == 0, ledger.logs()


def open_account(ledger: ServiceProcess, currency: str, tax: dict[str, object]) -> str:
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, timeout=30, json={
        "account_id": account, "type": "postpay", "currency": currency,
        "credit_limit": "1000.00", "tax": tax})
    assert opened.status_code == 201, opened.text
    return account


def balance(ledger: ServiceProcess, account: str) -> Decimal:
    answer = httpx.get(f"{ledger.url}/v1/accounts/{account}/balance", headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    return Decimal(answer.json()["balance"])


async def test_usage_recorded_by_the_ledger_is_invoiced_paid_and_settled_once(
    stack: tuple[ServiceProcess, ServiceProcess, ServiceProcess, FakeStripe], infra: Infra,
) -> None:
    ledger, invoicing, payments, stripe = stack
    gb = open_account(ledger, "GBP", {"country": "GB"})
    de = open_account(ledger, "EUR", {"country": "DE", "vat_number": "DE136695976"})
    nc = await nats.connect(infra.nats_url)
    try:
        for account, quantity in ((gb, 120), (gb, 80), (de, 500)):
            usage = UsageRecorded(event_id=str(uuid.uuid4()), account_id=uuid.UUID(account),
                                  product="sms", quantity=quantity, occurred_at=LAST_MONTH,
                                  status="submitted")
            await nc.jetstream().publish(USAGE_RECORDED, msgspec.json.encode(usage),
                                         headers={"Nats-Msg-Id": usage.event_id})
    finally:
        await nc.close()
    await eventually(lambda: query(infra.database_url, "SELECT count(*) FROM invoicing.usage_lines"
                                   " WHERE account_id = ANY(%s::uuid[])", ([gb, de],))[0][0] == 3,
                     what="usage reaching invoicing through ledger events", timeout_s=60)
    kinds = query(infra.database_url, "SELECT account_type, country, vat_number FROM"
                  " invoicing.accounts WHERE account_id = ANY(%s::uuid[]) ORDER BY country",
                  ([gb, de],))
    assert kinds == [("postpay", "DE", "DE136695976"), ("postpay", "GB", None)]
    debt_before = balance(ledger, gb)
    assert debt_before < 0

    run = httpx.post(f"{invoicing.url}/v1/billing-runs", json={"period": "2026-11"},
                     headers=OPERATOR, timeout=30)
    assert run.status_code in (200, 202), run.text
    run_id = run.json()["billing_run_id"]
    await eventually(lambda: httpx.get(f"{invoicing.url}/v1/billing-runs/{run_id}",
                                       headers=OPERATOR).json()["status"] == "completed",
                     what="the billing run", timeout_s=60)

    def only_invoice(account: str) -> dict[str, object]:
        page = httpx.get(f"{invoicing.url}/v1/invoices", params={"account_id": account},
                         headers=OPERATOR).json()
        assert len(page["items"]) == 1, page
        return httpx.get(f"{invoicing.url}/v1/invoices/{page['items'][0]['invoice_id']}",
                         headers=OPERATOR).json()  # type: ignore[no-any-return]

    gb_invoice, de_invoice = only_invoice(gb), only_invoice(de)
    gb_net = -debt_before  # the ledger's debits, here whole pence
    assert Decimal(str(gb_invoice["subtotal"])) == gb_net
    assert Decimal(str(gb_invoice["vat_total"])) == (gb_net * Decimal("0.2")).quantize(Decimal("0.01"))
    assert [g["vat_treatment"] for g in gb_invoice["vat_breakdown"]] == ["standard"]  # type: ignore[union-attr]
    assert [(g["vat_treatment"], g["vat_amount"]) for g in de_invoice["vat_breakdown"]] == \
        [("reverse_charge", "0.00")]  # type: ignore[union-attr]
    assert de_invoice["total"] == de_invoice["subtotal"]

    async def payments_knows_the_invoice() -> bool:
        answer = httpx.post(f"{payments.url}/v1/checkout/invoices/{gb_invoice['invoice_id']}",
                            headers=OPERATOR, timeout=30)
        return answer.status_code == 201

    await eventually(payments_knows_the_invoice, what="payments learning of the invoice",
                     timeout_s=30)
    checkout = httpx.post(f"{payments.url}/v1/checkout/invoices/{gb_invoice['invoice_id']}",
                          headers={**OPERATOR, "Idempotency-Key": "pay-gb"}, timeout=30)
    assert checkout.status_code == 201, checkout.text
    session = stripe.paid_session(checkout.json()["session_id"], f"pi_{uuid.uuid4().hex[:24]}")
    completed = json.dumps(event("checkout.session.completed", session)).encode()
    for _ in range(2):  # Stripe retries
        delivered = httpx.post(f"{payments.url}/v1/webhooks/stripe", content=completed, timeout=30,
                               headers={"Stripe-Signature": sign_payload(completed, WEBHOOK_SECRET),
                                        "Content-Type": "application/json"})
        assert delivered.status_code == 200, delivered.text

    await eventually(lambda: only_invoice(gb)["status"] == "paid", what="the invoice paid",
                     timeout_s=30)
    await eventually(lambda: balance(ledger, gb) == 0, what="the deficit settled", timeout_s=30)
    time.sleep(1.5)  # nothing more arrives
    assert balance(ledger, gb) == 0
    assert only_invoice(gb)["amount_due"] == "0.00"
