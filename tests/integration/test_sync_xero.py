"""The sync service as its own process, on real PostgreSQL and NATS, against the fake Xero.

The OAuth dance with PKCE (verified by the fake), the refusals (stolen state, replayed code,
wrong verifier), pushing invoices and their payments for several organisations through
injected 5xx, timeouts and commit-then-drop (each exactly once, no 429 provoked), refresh
races, broken grants, dead letters and their re-drive, webhooks read back into
payments.v1.received exactly once, and no secret in the logs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import msgspec
import nats
import psycopg
import pytest

from contracts.invoicing import (
    CreditNoteIssued,
    CustomerUpdated,
    InvoiceIssued,
    InvoiceLine,
    InvoiceVoided,
    VatBreakdown,
)
from contracts.payments import PaymentReceived
from services.database import conninfo
from services.embedded import free_port
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from sync_service.app.pusher import READ_CACHE_S
from tests.conftest import Infra
from tests.fakes.hubspot import ACCESS_TOKEN as HUBSPOT_TOKEN
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.xero import WEBHOOK_KEY, FakeXero, sign_webhook
from tests.integration.own_database import own_database
from tests.integration.service_process import ServiceProcess
from tests.integration.streams import stream_messages

pytestmark = pytest.mark.integration

ORGANISATIONS = 4
INVOICES = int(os.environ.get("SYNC_TEST_INVOICES", "200"))
ENCRYPTION_KEY = "t1:" + base64.b64encode(b"k" * 32).decode()
OPERATOR = mint_token(DEVELOPMENT_JWT_SECRET, sub="ops@example.test", scopes=["operator"])
OTHER_OPERATOR = mint_token(DEVELOPMENT_JWT_SECRET, sub="intruder@example.test",
                            scopes=["operator"])
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
# The fake's per-organisation limit, scaled down so that the test runs in seconds; the
# service is told the same limit, as it would be told Xero's 60 per minute.
CALLS_PER_WINDOW = 25
WINDOW_S = 1.0
CENT = Decimal("0.01")


@pytest.fixture(scope="module")
def fake_xero() -> Iterator[FakeXero]:
    fake = FakeXero(
        organisations=[{"tenantId": str(uuid.uuid4()), "tenantName": f"Org {n}"}
                       for n in range(ORGANISATIONS)],
        minute_limit=CALLS_PER_WINDOW, minute_window_s=WINDOW_S,
        # Keys forgotten at once: the lookup before a retry is what prevents duplicates.
        idempotency_window_s=0.0, slow_delay_s=1.5)
    with fake:
        yield fake


HUBSPOT_PRODUCTS = 150


@pytest.fixture(scope="module")
def fake_hubspot() -> Iterator[FakeHubSpot]:
    fake = FakeHubSpot()
    for n in range(HUBSPOT_PRODUCTS):
        fake.add_product(billing_product_key=f"product_{n}", hs_sku=f"SKU-{n}",
                         billing_tier="starter" if n % 2 else "Enterprise",
                         hs_price_gbp=f"0.{n:04d}", hs_price_eur="0.05", name=f"Product {n}")
    fake.add_product(billing_product_key="gold_sms", hs_sku="SKU-G", billing_tier="gold",
                     hs_price_gbp="1")
    fake.add_product(billing_product_key="bad_price", hs_sku="SKU-B", billing_tier="starter",
                     hs_price_gbp="about 3")
    fake.add_product(billing_product_key="twice", hs_sku="SKU-T1", billing_tier="starter",
                     hs_price_usd="1")
    fake.add_product(billing_product_key="twice", hs_sku="SKU-T2", billing_tier="starter",
                     hs_price_usd="2")
    with fake:
        yield fake


@pytest.fixture(scope="module")
def database(infra: Infra) -> Iterator[Infra]:
    with own_database(infra, "sync_xero") as own:
        yield own


@pytest.fixture(scope="module")
def service(database: Infra, fake_xero: FakeXero, fake_hubspot: FakeHubSpot,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    port = free_port()
    env = database.service_env(
        XERO_CLIENT_ID=fake_xero.client_id,
        XERO_LOGIN_BASE=fake_xero.url, XERO_IDENTITY_BASE=fake_xero.url,
        XERO_API_BASE=fake_xero.url,
        XERO_REDIRECT_URI=f"http://127.0.0.1:{port}/v1/connections/xero/callback",
        XERO_WEBHOOK_KEY=WEBHOOK_KEY,
        SYNC_ENCRYPTION_KEYS=ENCRYPTION_KEY,
        XERO_CALLS_PER_MINUTE=str(CALLS_PER_WINDOW), XERO_MINUTE_S=str(WINDOW_S),
        XERO_TIMEOUT_S="1", SYNC_RETRY_WAIT_INITIAL_S="0.1", SYNC_RETRY_WAIT_MAX_S="1",
        SYNC_ATTEMPTS_MAX="30", SYNC_POLL_INTERVAL_S="0.2", SYNC_LEASE_S="10",
        OUTBOX_POLL_INTERVAL_S="0.2", LOG_LEVEL="DEBUG",
        HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN, HUBSPOT_API_BASE=fake_hubspot.url,
        HUBSPOT_CATALOG_INTERVAL_S="3600", HUBSPOT_PUSH_INVOICES="false",
    )
    process = ServiceProcess("sync_service", env, port=port)
    process.start(tmp_path_factory.mktemp("sync"))
    try:
        process.wait_ready()
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.logs()[-5000:]
    logs = process.logs()
    leaked = [s for s in fake_xero.secrets_seen | {ENCRYPTION_KEY.split(":")[1], WEBHOOK_KEY,
                                                   HUBSPOT_TOKEN} if s in logs]
    assert not leaked, f"{len(leaked)} secrets reached the logs"


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(infra.nats_url)
    yield client
    await client.close()


def db(infra: Infra) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo(infra.database_url, options="-c search_path=sync"),
                           autocommit=True)


def eventually(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.3)


# -- the OAuth dance --------------------------------------------------------------------------


def start_authorization(service: ServiceProcess) -> tuple[str, str]:
    """(URL of Xero's consent page, binding cookie) as the operator's browser gets them."""
    response = httpx.get(f"{service.url}/v1/connections/xero/authorize", headers=AUTH)
    assert response.status_code == 302, response.text
    return response.headers["location"], response.cookies["sync_xero_oauth"]


def consent(authorize_url: str) -> tuple[str, str]:
    """Xero approves and sends the browser back: (code, state)."""
    response = httpx.get(authorize_url)
    assert response.status_code == 302
    query = parse_qs(urlparse(response.headers["location"]).query)
    return query["code"][0], query["state"][0]


def callback(service: ServiceProcess, code: str, state: str, binding: str | None
             ) -> httpx.Response:
    cookies = {"sync_xero_oauth": binding} if binding else None
    return httpx.get(f"{service.url}/v1/connections/xero/callback",
                     params={"code": code, "state": state}, cookies=cookies)


def connect(service: ServiceProcess) -> httpx.Response:
    url, binding = start_authorization(service)
    code, state = consent(url)
    return callback(service, code, state, binding)


def status(service: ServiceProcess) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/v1/sync/status", headers=AUTH)
    assert response.status_code == 200, response.text
    return {t["target"]: t for t in response.json()["targets"]}


def test_authorize_needs_an_operator(service: ServiceProcess) -> None:
    assert httpx.get(f"{service.url}/v1/connections/xero/authorize").status_code == 401
    assert status(service)["xero"]["connected"] is False


# -- HubSpot catalogue ----------------------------------------------------------------------------


async def catalog_messages(nc: nats.NATS) -> list[dict[str, Any]]:
    try:
        return [p for s, p, _ in await stream_messages(nc, "CATALOG")
                if s == "catalog.v1.prices_updated"]
    except nats.js.errors.NotFoundError:
        return []


async def test_the_hubspot_catalogue_is_published_only_when_it_changes(
    service: ServiceProcess, fake_hubspot: FakeHubSpot, nc: nats.NATS
) -> None:
    deadline = time.monotonic() + 20
    published: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not published:
        published = await catalog_messages(nc)
        await asyncio.sleep(0.3)
    assert len(published) == 1, "the pull at start-up publishes the catalogue"
    first = published[0]
    assert first["source"] == "hubspot"
    assert len(first["products"]) == HUBSPOT_PRODUCTS
    keys = {p["key"] for p in first["products"]}
    assert not keys & {"gold_sms", "bad_price", "twice"}
    assert {p["tier"] for p in first["products"]} == {"starter", "enterprise"}
    hubspot = status(service)["hubspot"]
    assert hubspot["connected"] is True and hubspot["last_success_at"] is not None

    url = f"{service.url}/v1/sync/hubspot/catalog/pull"
    unchanged = httpx.post(url, headers=AUTH)
    assert unchanged.status_code == 200, unchanged.text
    assert unchanged.json()["changed"] is False
    assert unchanged.json()["version"] == first["version"]
    assert len(unchanged.json()["rejected"]) == 4
    product = next(p for p in fake_hubspot.products.values()
                   if p["properties"]["billing_product_key"] == "product_3")
    product["properties"]["hs_price_gbp"] = "0.0400"
    changed = httpx.post(url, headers=AUTH).json()
    assert changed["changed"] is True and changed["version"] != first["version"]
    await asyncio.sleep(1.0)
    published = await catalog_messages(nc)
    assert [m["version"] for m in published] == [first["version"], changed["version"]]
    price = next(p for p in published[1]["products"] if p["key"] == "product_3")
    assert price["unit_prices"]["GBP"] == "0.04"
    assert fake_hubspot.rate_limited == []


def test_oauth_dance_with_pkce_connects_every_organisation(
    service: ServiceProcess, fake_xero: FakeXero, database: Infra
) -> None:
    url, binding = start_authorization(service)
    query = parse_qs(urlparse(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    code, state = consent(url)
    response = callback(service, code, state, binding)
    assert response.status_code == 200, response.text
    connected = response.json()["connected"]
    assert {c["connection_id"] for c in connected} == \
        {o["tenantId"] for o in fake_xero.organisations}
    assert sum(c["is_default"] for c in connected) == 1
    xero = status(service)["xero"]
    assert xero["connected"] is True
    assert len(xero["connections"]) == ORGANISATIONS
    # Tokens are stored encrypted: no token the fake issued is readable in the database.
    with db(database) as conn:
        rows = conn.execute("SELECT key_id, access_token_enc, refresh_token_enc"
                            " FROM xero_grants").fetchall()
    assert rows and all(r[0] == "t1" for r in rows)
    stored = b"".join(bytes(r[1]) + bytes(r[2]) for r in rows)
    assert not any(token.encode() in stored for token in fake_xero.secrets_seen)


def test_a_stolen_state_is_refused(service: ServiceProcess) -> None:
    url, _owner_binding = start_authorization(service)
    code, state = consent(url)
    # The attacker's browser has no binding cookie, or its own.
    assert callback(service, code, state, None).status_code == 400
    _, other_binding = start_authorization(service)
    assert callback(service, code, state, other_binding).status_code == 400


def test_a_replayed_code_is_refused(service: ServiceProcess) -> None:
    url, binding = start_authorization(service)
    code, state = consent(url)
    assert callback(service, code, state, binding).status_code == 200
    assert callback(service, code, state, binding).status_code == 400  # the state is spent
    fresh_url, fresh_binding = start_authorization(service)
    _, fresh_state = consent(fresh_url)
    refused = callback(service, code, fresh_state, fresh_binding)  # Xero refuses the code
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("application/problem+json")


def test_a_wrong_verifier_is_refused(service: ServiceProcess) -> None:
    url_a, _ = start_authorization(service)
    url_b, binding_b = start_authorization(service)
    code_a, _ = consent(url_a)
    # Code A redeemed under state B: the service sends B's verifier, Xero refuses it.
    assert callback(service, code_a, parse_qs(urlparse(url_b).query)["state"][0],
                    binding_b).status_code == 400


# -- pushing ------------------------------------------------------------------------------------


def invoice_message(n: int, account_id: uuid.UUID) -> InvoiceIssued:
    issued = datetime(2026, 11, 1, tzinfo=UTC)
    net = Decimal(100 + n) + Decimal("0.123456")  # more places than Xero keeps
    unit = Decimal("0.0391")
    quantity = 1000 + n
    usage_net = unit * quantity
    vat = ((net + usage_net) * Decimal("0.2")).quantize(Decimal("0.000001"))
    return InvoiceIssued(
        event_id=f"evt-inv-{n}-{uuid.uuid4().hex[:6]}", invoice_id=f"inv-{n:05d}",
        number=f"INV-2026-{n:06d}", account_id=account_id, currency="GBP", period="2026-10",
        lines=[
            InvoiceLine(description="Platform fee", product="platform", quantity=1,
                        unit_price=f"{net}", net_amount=f"{net}", vat_rate="20",
                        vat_treatment="standard", vat_amount=f"{(net * Decimal('0.2')):.6f}"),
            InvoiceLine(description="SMS to UK", product="sms", quantity=quantity,
                        unit_price=f"{unit}", net_amount=f"{usage_net}", vat_rate="20",
                        vat_treatment="standard",
                        vat_amount=f"{(usage_net * Decimal('0.2')):.6f}"),
        ],
        vat_breakdown=[VatBreakdown(vat_rate="20", vat_treatment="standard",
                                    net_amount=f"{net + usage_net}", vat_amount=f"{vat}")],
        subtotal=f"{net + usage_net}", vat_total=f"{vat}", total=f"{net + usage_net + vat}",
        issued_at=issued, due_at=issued + timedelta(days=30))


def payment_message(invoice: InvoiceIssued) -> PaymentReceived:
    return PaymentReceived(
        payment_id=f"pay-{invoice.invoice_id}", provider="stripe",
        provider_reference=f"cs_test_{invoice.invoice_id}", account_id=invoice.account_id,
        purpose="invoice", amount=invoice.subtotal, vat_amount=invoice.vat_total,
        currency="GBP", invoice_id=invoice.invoice_id, received_at=datetime.now(UTC))


async def publish(nc: nats.NATS, subject: str, message: msgspec.Struct, msg_id: str) -> None:
    await nc.jetstream().publish(subject, msgspec.json.encode(message),
                                 headers={"Nats-Msg-Id": msg_id})


def wait_until_drained(service: ServiceProcess, timeout_s: float, expected_done: int,
                       infra: Infra) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        xero = status(service)["xero"]
        with db(infra) as conn:
            done = conn.execute("SELECT count(*) FROM sync_jobs WHERE status = 'done'"
                                ).fetchone()
        if xero["backlog"] == 0 and done is not None and done[0] >= expected_done:
            return xero
        time.sleep(0.5)
    raise AssertionError(f"not drained in {timeout_s}s: {status(service)['xero']}")


def assign(service: ServiceProcess, account_id: uuid.UUID, tenant_id: str) -> None:
    response = httpx.put(f"{service.url}/v1/sync/accounts/{account_id}/connection",
                         json={"connection_id": tenant_id}, headers=AUTH)
    assert response.status_code == 204, response.text


def map_products(service: ServiceProcess) -> None:
    for product, body in (("sms", {"item_code": "SMS-UK", "account_code": "201"}),
                          ("*", {"account_code": "200"})):
        response = httpx.put(f"{service.url}/v1/sync/mappings/products/{product}", json=body,
                             headers=AUTH)
        assert response.status_code == 204, response.text


async def test_invoices_and_payments_exist_exactly_once_through_faults(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra
) -> None:
    tenants = [o["tenantId"] for o in fake_xero.organisations]
    accounts = [uuid.uuid4() for _ in range(4 * ORGANISATIONS)]
    for index, account in enumerate(accounts):
        assign(service, account, tenants[index % ORGANISATIONS])
    map_products(service)
    invoices = [invoice_message(n, accounts[n % len(accounts)]) for n in range(INVOICES)]
    fake_xero.fault_rates = {"unavailable": 0.05, "drop": 0.05, "slow": 0.02}
    started = time.monotonic()
    # A tenth of the payments arrive before their invoice (Lago's "payment before invoice").
    early = invoices[: INVOICES // 10]
    for invoice in early:
        await publish(nc, "payments.v1.received", payment_message(invoice),
                      f"pay-{invoice.invoice_id}")
    for invoice in invoices:
        await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
        await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id + "-again")
    for invoice in invoices[INVOICES // 10:]:
        await publish(nc, "payments.v1.received", payment_message(invoice),
                      f"pay-{invoice.invoice_id}")
    xero = await asyncio.to_thread(wait_until_drained, service, 60 + INVOICES * 0.3,
                                   2 * INVOICES, database)
    elapsed_s = time.monotonic() - started
    fake_xero.fault_rates = {}

    assert sum(fake_xero.faults_injected.values()) > 0
    assert fake_xero.rate_limited == [], fake_xero.rate_limited[:5]
    for n, invoice in enumerate(invoices):
        tenant = tenants[(n % len(accounts)) % ORGANISATIONS]
        found = fake_xero.invoices_numbered(tenant, invoice.number)
        assert len(found) == 1, (invoice.number, len(found))
        xero_invoice = found[0]
        assert xero_invoice["Type"] == "ACCREC"
        # Net and VAT each to the cent, as a VAT invoice shows them.
        assert Decimal(str(xero_invoice["Total"])) == \
            Decimal(invoice.subtotal).quantize(CENT) + Decimal(invoice.vat_total).quantize(CENT)
        assert xero_invoice["Status"] == "PAID", xero_invoice["InvoiceNumber"]
        assert len(xero_invoice["Payments"]) == 1
        sms = xero_invoice["LineItems"][1]
        assert (sms["ItemCode"], sms["AccountCode"], sms["TaxType"]) == \
            ("SMS-UK", "201", "OUTPUT2")
    for tenant in tenants:
        numbers = [c["ContactNumber"] for c in fake_xero.contacts[tenant].values()]
        assert len(numbers) == len(set(numbers)) == len(accounts) // ORGANISATIONS
    assert xero["dead_letters"] == 0 and xero["failures"] == 0 and xero["backlog"] == 0
    for connection in xero["connections"]:
        assert connection["connected"] and connection["last_success_at"] is not None
    # Pacing: the whole push within reach of the organisations' combined limit.
    calls = sum(fake_xero.api_calls.values())
    assert calls / elapsed_s <= ORGANISATIONS * CALLS_PER_WINDOW / WINDOW_S


async def test_ten_concurrent_pushes_on_an_expired_token_refresh_once(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra
) -> None:
    tenant = fake_xero.organisations[0]["tenantId"]
    account = uuid.uuid4()
    assign(service, account, tenant)
    before = fake_xero.refresh_count()
    fake_xero.expire_access_tokens()
    invoices = [invoice_message(10_000 + n, account) for n in range(10)]
    for invoice in invoices:
        await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
    await asyncio.to_thread(eventually, lambda: all(
        fake_xero.invoices_numbered(tenant, i.number) for i in invoices), 60.0)
    assert fake_xero.refresh_count() - before == 1
    for invoice in invoices:
        assert len(fake_xero.invoices_numbered(tenant, invoice.number)) == 1


async def test_a_validation_error_is_a_dead_letter_that_can_be_redriven(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra
) -> None:
    tenant = fake_xero.organisations[1]["tenantId"]
    account = uuid.uuid4()
    assign(service, account, tenant)
    bad = httpx.put(f"{service.url}/v1/sync/mappings/products/platform",
                    json={"tax_type": "BOGUS", "connection_id": tenant}, headers=AUTH)
    assert bad.status_code == 204
    await asyncio.sleep(READ_CACHE_S)  # a mapping applies within this
    invoice = invoice_message(20_000, account)
    await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
    deadline = time.monotonic() + 30
    letters: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not letters:
        letters = [d for d in httpx.get(f"{service.url}/v1/sync/dead-letters", headers=AUTH)
                   .json()["dead_letters"] if d["subject_id"] == invoice.invoice_id]
        await asyncio.sleep(0.3)
    assert letters, "no dead letter"
    assert "BOGUS" in letters[0]["last_error"]
    assert status(service)["xero"]["dead_letters"] == 1
    fixed = httpx.put(f"{service.url}/v1/sync/mappings/products/platform",
                      json={"tax_type": "OUTPUT2", "connection_id": tenant}, headers=AUTH)
    assert fixed.status_code == 204
    await asyncio.sleep(READ_CACHE_S)
    retried = httpx.post(
        f"{service.url}/v1/sync/dead-letters/{letters[0]['dead_letter_id']}/retry",
        headers=AUTH)
    assert retried.status_code == 202, retried.text
    await asyncio.to_thread(eventually, lambda: fake_xero.invoices_numbered(tenant,
                                                                         invoice.number))
    assert len(fake_xero.invoices_numbered(tenant, invoice.number)) == 1
    assert status(service)["xero"]["dead_letters"] == 0
    missing = httpx.post(f"{service.url}/v1/sync/dead-letters/999999/retry", headers=AUTH)
    assert missing.status_code == 404


async def test_credit_notes_are_allocated_and_voids_reach_xero_after_their_invoice(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS
) -> None:
    tenant = fake_xero.organisations[1]["tenantId"]
    account = uuid.uuid4()
    assign(service, account, tenant)
    credited, voided = invoice_message(50_000, account), invoice_message(50_001, account)
    first_line = credited.lines[0]
    note = CreditNoteIssued(
        event_id="evt-cn-1", credit_note_id="cn-50000", number="CN-2026-000001",
        invoice_id=credited.invoice_id, account_id=account, currency="GBP",
        lines=[InvoiceLine(description="Goodwill", product="platform", quantity=1,
                           unit_price="10.00", net_amount="10.00", vat_rate="20",
                           vat_treatment="standard", vat_amount="2.00")],
        vat_breakdown=[], subtotal="10.00", vat_total="2.00", total="12.00",
        reason="Service credit", issued_at=credited.issued_at)
    assert first_line.product == "platform"
    void = InvoiceVoided(event_id="evt-void-1", invoice_id=voided.invoice_id,
                         number=voided.number, account_id=account, reason="Issued in error",
                         voided_at=datetime.now(UTC))
    # The credit note and the void arrive before their invoices.
    await publish(nc, "invoicing.v1.credit_note_issued", note, note.event_id)
    await publish(nc, "invoicing.v1.voided", void, void.event_id)
    await publish(nc, "invoicing.v1.issued", credited, credited.event_id)
    await publish(nc, "invoicing.v1.issued", voided, voided.event_id)

    def settled() -> bool:
        notes = list(fake_xero.credit_notes[tenant].values())
        found = fake_xero.invoices_numbered(tenant, voided.number)
        return bool(notes) and bool(notes[0]["Allocations"]) and bool(found) \
            and found[0]["Status"] == "VOIDED"

    await asyncio.to_thread(eventually, settled)
    notes = [n for n in fake_xero.credit_notes[tenant].values()
             if n["CreditNoteNumber"] == note.number]
    assert len(notes) == 1 and notes[0]["Type"] == "ACCRECCREDIT"
    assert notes[0]["RemainingCredit"] == 0.0
    invoice = fake_xero.invoices_numbered(tenant, credited.number)[0]
    assert Decimal(str(invoice["AmountCredited"])) == Decimal("12.00")
    assert len(fake_xero.invoices_numbered(tenant, voided.number)) == 1


async def test_an_unreadable_message_is_dead_lettered_not_retried_for_ever(
    service: ServiceProcess, nc: nats.NATS
) -> None:
    await nc.jetstream().publish("invoicing.v1.issued", b'{"invoice_id": 12',
                                 headers={"Nats-Msg-Id": "garbage-1"})
    deadline = time.monotonic() + 20
    letters: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not letters:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            letters = [p for s, p, _ in await stream_messages(nc, "DEADLETTER")
                       if s == "deadletter.v1.invoicing.v1.issued"
                       and p.get("consumer") == "sync-invoicing"]
        await asyncio.sleep(0.3)
    assert len(letters) == 1
    assert letters[0]["reason"] == "invalid_payload"


# -- webhooks -------------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


def test_webhook_signatures_and_intent_to_receive(service: ServiceProcess) -> None:
    body = json.dumps({"events": [], "firstEventSequence": 0, "lastEventSequence": 0,
                       "entropy": "S0m3r4Nd0mt3xt"}).encode()
    url = f"{service.url}/v1/webhooks/xero"
    # Xero labels its deliveries JSON; unlabelled bodies are refused (415) before any route.
    good = httpx.post(url, content=body, headers={"x-xero-signature": sign_webhook(body),
                                                  **JSON})
    assert (good.status_code, good.content) == (200, b"")
    bad = httpx.post(url, content=body,
                     headers={"x-xero-signature": sign_webhook(body, "not-the-key"), **JSON})
    assert (bad.status_code, bad.content) == (401, b"")
    assert httpx.post(url, content=body, headers=JSON).status_code == 401


async def test_a_payment_recorded_in_xero_becomes_payments_received_once(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra
) -> None:
    tenant = fake_xero.organisations[2]["tenantId"]
    account = uuid.uuid4()
    assign(service, account, tenant)
    invoice = invoice_message(30_000, account)
    await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
    def synced() -> bool:
        with db(database) as conn:
            row = conn.execute("SELECT status FROM sync_jobs WHERE kind = 'invoice'"
                               " AND subject_id = %s", (invoice.invoice_id,)).fetchone()
        return row is not None and row[0] == "done"

    await asyncio.to_thread(eventually, synced)
    xero_invoice = fake_xero.invoices_numbered(tenant, invoice.number)[0]
    fake_xero.record_payment(tenant, xero_invoice["InvoiceID"], "60.00")
    body = fake_xero.webhook_body(tenant, xero_invoice["InvoiceID"])
    for _ in range(2):  # Xero retries; the same event twice
        response = httpx.post(f"{service.url}/v1/webhooks/xero", content=body,
                              headers={"x-xero-signature": sign_webhook(body), **JSON})
        assert response.status_code == 200
    again = fake_xero.webhook_body(tenant, xero_invoice["InvoiceID"])  # a later event
    httpx.post(f"{service.url}/v1/webhooks/xero", content=again,
               headers={"x-xero-signature": sign_webhook(again), **JSON})
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [p for s, p, _ in await stream_messages(nc, "PAYMENTS")
                 if s == "payments.v1.received" and p["provider"] == "xero"]
        if found:
            await asyncio.sleep(1.0)  # would a second one come?
            found = [p for s, p, _ in await stream_messages(nc, "PAYMENTS")
                     if s == "payments.v1.received" and p["provider"] == "xero"]
            break
        await asyncio.sleep(0.3)
    assert len(found) == 1, found
    payment = found[0]
    assert payment["purpose"] == "invoice" and payment["invoice_id"] == invoice.invoice_id
    assert payment["account_id"] == str(account)
    assert Decimal(payment["amount"]) + Decimal(payment["vat_amount"]) == Decimal("60.00")
    assert Decimal(payment["vat_amount"]) == Decimal("10.00")
    # Our own pushed payments are never announced back.
    assert all(p["provider_reference"] != "" for p in found)


async def test_a_killed_sync_process_loses_nothing_and_doubles_nothing(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tenant = fake_xero.organisations[0]["tenantId"]
    accounts = [uuid.uuid4() for _ in range(5)]
    for account in accounts:
        assign(service, account, tenant)
    invoices = [invoice_message(60_000 + n, accounts[n % 5]) for n in range(80)]
    fake_xero.fault_rates = {"slow": 0.1}  # answers in flight when the process dies
    for invoice in invoices:
        await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
        await publish(nc, "payments.v1.received", payment_message(invoice),
                      f"pay-{invoice.invoice_id}")

    def some_pushed() -> bool:
        return sum(bool(fake_xero.invoices_numbered(tenant, i.number)) for i in invoices) >= 20

    await asyncio.to_thread(eventually, some_pushed)
    assert service.process is not None
    service.process.kill()  # no drain, no acks, leases left behind
    service.process.wait()
    fake_xero.fault_rates = {}
    service.start(tmp_path_factory.mktemp("sync-restarted"))
    await asyncio.to_thread(service.wait_ready)

    def all_paid() -> bool:
        return all(
            (found := fake_xero.invoices_numbered(tenant, i.number))
            and found[0]["Status"] == "PAID" for i in invoices)

    await asyncio.to_thread(eventually, all_paid, 60.0)
    for invoice in invoices:
        found = fake_xero.invoices_numbered(tenant, invoice.number)
        assert len(found) == 1 and len(found[0]["Payments"]) == 1, invoice.number
    numbers = [c["ContactNumber"] for c in fake_xero.contacts[tenant].values()]
    assert len(numbers) == len(set(numbers))


# -- a broken grant -------------------------------------------------------------------------------


async def test_invalid_grant_marks_the_connection_broken_and_keeps_its_changes(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS, database: Infra
) -> None:
    tenant = fake_xero.organisations[3]["tenantId"]
    account = uuid.uuid4()
    assign(service, account, tenant)
    for grant in fake_xero._grants.values():
        grant.revoked = True  # the organisation removed our app
    fake_xero.expire_access_tokens()
    invoice = invoice_message(40_000, account)
    await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
    deadline = time.monotonic() + 20
    connection: dict[str, Any] = {}
    while time.monotonic() < deadline:
        connection = next(c for c in status(service)["xero"]["connections"]
                          if c["connection_id"] == tenant)
        if connection["state"] == "broken":
            break
        await asyncio.sleep(0.3)
    assert connection["state"] == "broken" and connection["connected"] is False
    assert connection["backlog"] == 1
    assert not fake_xero.invoices_numbered(tenant, invoice.number)
    # Reconnecting picks the change up again.
    assert connect(service).status_code == 200
    await asyncio.to_thread(eventually, lambda: fake_xero.invoices_numbered(tenant,
                                                                         invoice.number))
    assert len(fake_xero.invoices_numbered(tenant, invoice.number)) == 1

def customer_message(account: uuid.UUID, version: int, name: str, **fields: Any
                     ) -> CustomerUpdated:
    return CustomerUpdated(event_id=f"customer_updated:{account}:{version}", account_id=account,
                           version=version, legal_name=name,
                           updated_at=datetime.now(UTC), **fields)


async def test_contacts_carry_the_billing_profile_and_follow_its_changes(
    service: ServiceProcess, fake_xero: FakeXero, nc: nats.NATS
) -> None:
    tenant = fake_xero.organisations[2]["tenantId"]
    acme, namesake, lone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for account in (acme, namesake, lone):
        assign(service, account, tenant)

    def contact(account: uuid.UUID) -> dict[str, Any] | None:
        found = [c for c in fake_xero.contacts[tenant].values()
                 if c.get("ContactNumber") == str(account)]
        assert len(found) <= 1, found
        return found[0] if found else None

    v1 = customer_message(acme, 1, "Acme Widgets Ltd", address_lines=["1 High Street", "Leeds"],
                          country="GB", billing_email="accounts@acme.example",
                          vat_number="GB123456789")
    await publish(nc, "invoicing.v1.customer_updated", v1, v1.event_id)
    invoice = invoice_message(70_000, acme)
    await publish(nc, "invoicing.v1.issued", invoice, invoice.event_id)
    await asyncio.to_thread(eventually, lambda: bool(fake_xero.invoices_numbered(
        tenant, invoice.number)))
    made = contact(acme)
    assert made is not None
    assert (made["Name"], made["EmailAddress"], made["TaxNumber"]) == \
        ("Acme Widgets Ltd", "accounts@acme.example", "GB123456789")
    assert made["Addresses"] == [{"AddressType": "POBOX", "AddressLine1": "1 High Street",
                                  "AddressLine2": "Leeds", "Country": "GB"}]

    # Another customer with the same name: Xero names are unique, so it is told apart.
    same = customer_message(namesake, 1, "Acme Widgets Ltd")
    await publish(nc, "invoicing.v1.customer_updated", same, same.event_id)
    await asyncio.to_thread(eventually, lambda: contact(namesake) is not None)
    assert contact(namesake)["Name"] == f"Acme Widgets Ltd ({namesake})"  # type: ignore[index]

    # A change updates the contact in place; an older version arriving late changes nothing.
    v2 = customer_message(acme, 2, "Acme Widgets Group Ltd", address_lines=["2 Mill Lane"],
                          country="GB", billing_email="ap@acme.example")
    await publish(nc, "invoicing.v1.customer_updated", v2, v2.event_id)
    await publish(nc, "invoicing.v1.customer_updated", v1, v1.event_id + "-late")
    await asyncio.to_thread(eventually, lambda: (contact(acme) or {}).get("Name")
                            == "Acme Widgets Group Ltd")
    updated = contact(acme)
    assert updated is not None and updated["ContactID"] == made["ContactID"]
    assert updated["EmailAddress"] == "ap@acme.example"
    assert updated["Addresses"][0]["AddressLine1"] == "2 Mill Lane"

    # A customer with no invoice yet still gets its contact.
    alone = customer_message(lone, 1, "Solo Trader")
    await publish(nc, "invoicing.v1.customer_updated", alone, alone.event_id)
    await asyncio.to_thread(eventually, lambda: contact(lone) is not None)
    assert contact(lone)["Name"] == "Solo Trader"  # type: ignore[index]



def test_disconnect_revokes_the_grant(service: ServiceProcess, fake_xero: FakeXero) -> None:
    revoked_before = len(fake_xero.revoked_tokens)
    for organisation in fake_xero.organisations:
        response = httpx.delete(
            f"{service.url}/v1/connections/xero/{organisation['tenantId']}", headers=AUTH)
        assert response.status_code == 204, response.text
    assert len(fake_xero.revoked_tokens) == revoked_before + 1
    xero = status(service)["xero"]
    assert xero["connected"] is False
    assert {c["state"] for c in xero["connections"]} == {"disconnected"}
