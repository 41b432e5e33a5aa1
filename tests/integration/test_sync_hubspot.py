"""HubSpot invoices: an issued invoice becomes a HubSpot invoice with its company and line
items, open; paid and void follow; never twice, even when the create's answer is lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import nats
import pytest

from contracts.invoicing import InvoiceIssued, InvoiceLine, InvoicePaid, InvoiceVoided
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.hubspot import ACCESS_TOKEN, FakeHubSpot
from tests.integration.own_database import own_database
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops",
                                                scopes=["operator"])}


@pytest.fixture(scope="module")
def fake_hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot() as fake:  # no products: the catalogue pull publishes nothing
        yield fake


@pytest.fixture(scope="module")
def database(infra: Infra) -> Iterator[Infra]:
    with own_database(infra, "sync_hubspot") as own:
        yield own


@pytest.fixture(scope="module")
def service(database: Infra, fake_hubspot: FakeHubSpot,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = database.service_env(
        HUBSPOT_ACCESS_TOKEN=ACCESS_TOKEN, HUBSPOT_API_BASE=fake_hubspot.url,
        HUBSPOT_CATALOG_INTERVAL_S="3600", HUBSPOT_TIMEOUT_S="1",
        SYNC_RETRY_WAIT_INITIAL_S="0.1", SYNC_RETRY_WAIT_MAX_S="1", SYNC_POLL_INTERVAL_S="0.2",
        SYNC_DEV_KEY_PATH=str(tmp_path_factory.mktemp("key") / "sync-dev.key"),
    )
    process = ServiceProcess("sync_service", env)
    process.start(tmp_path_factory.mktemp("sync-hubspot"))
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0, process.logs()[-3000:]
    assert ACCESS_TOKEN not in process.logs()


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(infra.nats_url)
    yield client
    await client.close()


def invoice(n: int, account_id: uuid.UUID) -> InvoiceIssued:
    issued = datetime(2026, 11, 1, tzinfo=UTC)
    lines = [InvoiceLine(description="SMS to UK", product="sms", quantity=1000,
                         unit_price="0.0391", net_amount="39.10", vat_rate="20",
                         vat_treatment="standard", vat_amount="7.82"),
             InvoiceLine(description="Virtual number", product="vmn", quantity=1,
                         unit_price="10.00", net_amount="10.00", vat_rate="20",
                         vat_treatment="standard", vat_amount="2.00")]
    return InvoiceIssued(
        event_id=f"evt-hs-{n}", invoice_id=f"inv-hs-{n}", number=f"INV-HS-{n:04d}",
        account_id=account_id, currency="GBP", period="2026-10", lines=lines, vat_breakdown=[],
        subtotal="49.10", vat_total="9.82", total="58.92", issued_at=issued,
        due_at=issued + timedelta(days=30))


async def publish(nc: nats.NATS, subject: str, message: msgspec.Struct, msg_id: str) -> None:
    await nc.jetstream().publish(subject, msgspec.json.encode(message),
                                 headers={"Nats-Msg-Id": msg_id})


def eventually(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.3)


async def test_invoices_reach_hubspot_once_with_company_lines_and_status(
    service: ServiceProcess, fake_hubspot: FakeHubSpot, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    paid, voided, dropped = invoice(1, account), invoice(2, account), invoice(3, account)
    fake_hubspot.drop_next(2)  # the company's and the first invoice's answers are lost
    for message in (paid, voided, dropped):
        await publish(nc, "invoicing.v1.issued", message, message.event_id)
    # Status changes may come before the invoice is in HubSpot: they wait for it.
    await publish(nc, "invoicing.v1.paid", InvoicePaid(
        event_id="evt-hs-paid-1", invoice_id=paid.invoice_id, number=paid.number,
        account_id=account, currency="GBP", amount_paid="58.92", paid_at=datetime.now(UTC)),
        "evt-hs-paid-1")
    await publish(nc, "invoicing.v1.voided", InvoiceVoided(
        event_id="evt-hs-void-2", invoice_id=voided.invoice_id, number=voided.number,
        account_id=account, reason="issued in error", voided_at=datetime.now(UTC)),
        "evt-hs-void-2")

    def by_id(invoice_id: str) -> list[dict[str, Any]]:
        return [i for i in fake_hubspot.of_type("invoices")
                if i["properties"].get("billing_invoice_id") == invoice_id]

    def settled() -> bool:
        states = [[i["properties"].get("hs_invoice_status") for i in by_id(m.invoice_id)]
                  for m in (paid, voided, dropped)]
        return states == [["paid"], ["voided"], ["open"]]

    await asyncio.to_thread(eventually, settled, 120.0)
    companies = [c for c in fake_hubspot.of_type("companies")
                 if c["properties"].get("billing_account_id") == str(account)]
    assert len(companies) == 1
    for message in (paid, voided, dropped):
        [created] = by_id(message.invoice_id)
        assert fake_hubspot.associated("invoices", created["id"], "companies") == \
            [companies[0]["id"]]
        lines = fake_hubspot.associated("invoices", created["id"], "line_items")
        assert len(lines) == 2
        assert created["properties"]["hs_currency"] == "GBP"
    all_lines = [li for li in fake_hubspot.of_type("line_items")
                 if li["properties"].get("billing_invoice_id") == dropped.invoice_id]
    assert len(all_lines) == 2
    assert fake_hubspot.rate_limited == []
    hubspot = {t["target"]: t for t in httpx.get(f"{service.url}/v1/sync/status",
                                                  headers=AUTH).json()["targets"]}["hubspot"]
    assert hubspot["connected"] is True and hubspot["backlog"] == 0
    assert hubspot["dead_letters"] == 0


async def test_an_account_linked_to_a_company_has_its_invoices_there(
    service: ServiceProcess, fake_hubspot: FakeHubSpot, nc: nats.NATS
) -> None:
    with fake_hubspot._lock:
        existing = fake_hubspot._create("companies", {"properties": {"name": "Acme Ltd"}})
    account = uuid.uuid4()
    refused = httpx.put(f"{service.url}/v1/sync/accounts/{account}/hubspot-company",
                        json={"company_id": "not-a-number"}, headers=AUTH)
    assert refused.status_code == 400
    linked = httpx.put(f"{service.url}/v1/sync/accounts/{account}/hubspot-company",
                       json={"company_id": existing["id"]}, headers=AUTH)
    assert linked.status_code == 204, linked.text
    message = invoice(10, account)
    await publish(nc, "invoicing.v1.issued", message, message.event_id)

    def pushed() -> list[dict[str, Any]]:
        return [i for i in fake_hubspot.of_type("invoices")
                if i["properties"].get("billing_invoice_id") == message.invoice_id]

    await asyncio.to_thread(eventually, lambda: bool(pushed()))
    assert fake_hubspot.associated("invoices", pushed()[0]["id"], "companies") == \
        [existing["id"]]
