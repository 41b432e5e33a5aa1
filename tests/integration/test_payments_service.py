"""The payments service as its own process, on real PostgreSQL and NATS, against a local
fake of Stripe's API and of HubSpot's CRM API.

What reaches the ledger is the message on the PAYMENTS stream; these tests read that stream
with plain nats-py and stop there (the ledger's crediting is tested in ledger_service).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import nats
import psycopg
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.stripe import SECRET_KEY, FakeStripe, event, sign_payload
from tests.integration.service_process import ServiceProcess
from tests.integration.streams import stream_messages

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_test_current_endpoint_secret"
OLD_WEBHOOK_SECRET = "whsec_test_previous_endpoint_secret"
HUBSPOT_SECRET = "hubspot-test-client-secret-0123456789"
HUBSPOT_TOKEN = "hubspot-test-access-token"
OPERATOR = mint_token(DEVELOPMENT_JWT_SECRET, sub="ops@example.test", scopes=["operator"])


def portal(account_id: uuid.UUID) -> str:
    return mint_token(DEVELOPMENT_JWT_SECRET, sub=f"portal-{account_id}", scopes=["portal"],
                      tenant_id=str(account_id))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- a fake of HubSpot's batch read of invoices ---------------------------------------------------


class FakeHubSpot:
    def __init__(self) -> None:
        self.invoices: dict[str, dict[str, Any]] = {}
        self.reads = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {HUBSPOT_TOKEN}":
                    self._send(401, {"status": "error", "category": "INVALID_AUTHENTICATION"})
                    return
                fake.reads += 1
                ids = [item["id"] for item in body["inputs"]]
                found = [{"id": i, "properties": fake.invoices[i]} for i in ids
                         if i in fake.invoices]
                missing = [i for i in ids if i not in fake.invoices]
                result: dict[str, Any] = {"status": "COMPLETE", "results": found}
                if missing:
                    result["errors"] = [{"status": "error", "category": "OBJECT_NOT_FOUND",
                                         "context": {"ids": missing}}]
                self._send(207 if missing else 200, result)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_hubspot() -> Iterator[FakeHubSpot]:
    fake = FakeHubSpot()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def service(
    infra: Infra, fake_stripe: FakeStripe, fake_hubspot: FakeHubSpot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    env = infra.service_env(
        STRIPE_API_BASE=fake_stripe.url,
        STRIPE_SECRET_KEY=SECRET_KEY,
        STRIPE_WEBHOOK_SECRETS=f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
        STRIPE_TIMEOUT_S="1",
        STRIPE_RETRY_WAIT_INITIAL_S="0.05",
        STRIPE_RETRY_WAIT_MAX_S="1",
        HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET,
        HUBSPOT_API_BASE=fake_hubspot.url,
        HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN,
        OUTBOX_POLL_INTERVAL_S="0.2",
    )
    process = ServiceProcess("payments_service", env).start(tmp_path_factory.mktemp("payments"))
    try:
        process.wait_ready()
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.logs()
    logs = process.logs()
    for secret in (SECRET_KEY, WEBHOOK_SECRET, OLD_WEBHOOK_SECRET, HUBSPOT_SECRET, HUBSPOT_TOKEN):
        assert secret not in logs


@pytest.fixture
async def client(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        yield http


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(infra.database_url, autocommit=True) as conn:
        yield conn


# -- helpers -------------------------------------------------------------------------------------


async def open_topup(
    client: httpx.AsyncClient, account_id: uuid.UUID, amount: str = "100.00", *,
    token: str = OPERATOR, key: str | None = None, **extra: Any,
) -> httpx.Response:
    headers = bearer(token) | ({"Idempotency-Key": key} if key else {})
    return await client.post("/v1/checkout/topups", headers=headers,
                             json={"account_id": str(account_id), "amount": amount, **extra})


async def deliver(
    client: httpx.AsyncClient, payload: dict[str, Any] | bytes, *,
    secret: str = WEBHOOK_SECRET, timestamp: int | None = None,
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await client.post(
        "/v1/webhooks/stripe", content=body,
        headers={"Stripe-Signature": sign_payload(body, secret, timestamp),
                 "Content-Type": "application/json"},
    )


async def paid_topup(
    client: httpx.AsyncClient, fake: FakeStripe, account_id: uuid.UUID, amount: str = "100.00"
) -> tuple[str, str]:
    """A top-up checked out and paid: (session id, payment intent id)."""
    response = await open_topup(client, account_id, amount)
    assert response.status_code == 201, response.text
    session_id = response.json()["session_id"]
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    delivered = await deliver(client, event("checkout.session.completed",
                                            fake.paid_session(session_id, intent)))
    assert delivered.json()["outcome"] == "payment_received"
    return session_id, intent


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def outbox_drained(db: psycopg.AsyncConnection[Any]) -> None:
    async def drained() -> bool:
        cursor = await db.execute("SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL")
        row = await cursor.fetchone()
        return row is not None and row[0] == 0

    await eventually(drained)


async def published(
    infra: Infra, subject: str, **match: str
) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """Messages on the PAYMENTS stream with `subject` whose payload has the given fields."""
    nc = await nats.connect(infra.nats_url)
    try:
        return [(body, headers) for on, body, headers in await stream_messages(nc, "PAYMENTS")
                if on == subject and all(body.get(k) == v for k, v in match.items())]
    finally:
        await nc.close()


async def scalar(db: psycopg.AsyncConnection[Any], query: str, *params: Any) -> Any:
    cursor = await db.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


# -- top-ups, end to end -------------------------------------------------------------------------


async def test_topup_of_100_gbp_plus_vat_delivered_three_times_and_in_parallel_is_received_once(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    opened = await open_topup(client, account, "100.00")
    assert opened.status_code == 201, opened.text
    view = opened.json()
    assert (view["amount"], view["vat_amount"], view["currency"]) == ("100.00", "20.00", "GBP")
    session_id = view["session_id"]
    # The session is recorded before the URL is handed out.
    assert await scalar(db, "SELECT status FROM payments.checkouts WHERE stripe_session_id = %s",
                        session_id) == "open"
    lines = fake_stripe.line_items[session_id]
    assert [(line["name"], line["unit_amount"]) for line in lines] == [
        ("Account credit (GBP)", 10_000), ("VAT", 2_000)]
    assert fake_stripe.sessions[session_id]["amount_total"] == 12_000

    completed = event("checkout.session.completed",
                      fake_stripe.paid_session(session_id, f"pi_{uuid.uuid4().hex[:24]}"))
    outcomes = [(await deliver(client, completed)).json()["outcome"] for _ in range(3)]
    assert outcomes == ["payment_received", "duplicate", "duplicate"]
    parallel = await asyncio.gather(*(deliver(client, completed) for _ in range(6)))
    assert {r.status_code for r in parallel} == {200}
    assert {r.json()["outcome"] for r in parallel} == {"duplicate"}
    # The same session announced again under another event id pays nothing more.
    again = event("checkout.session.async_payment_succeeded", completed["data"]["object"])
    assert (await deliver(client, again)).json()["outcome"] == "already_received"

    await outbox_drained(db)
    messages = await published(infra, "payments.v1.received", account_id=str(account))
    assert len(messages) == 1
    body, headers = messages[0]
    assert (body["amount"], body["vat_amount"], body["currency"]) == ("100.00", "20.00", "GBP")
    assert (body["purpose"], body["provider"], body["provider_reference"]) == (
        "topup", "stripe", session_id)
    assert headers["Nats-Msg-Id"] == body["payment_id"]


async def test_first_deliveries_racing_in_parallel_record_one_payment(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    session_id = (await open_topup(client, account, "25.00")).json()["session_id"]
    completed = event("checkout.session.completed", fake_stripe.paid_session(session_id))
    responses = await asyncio.gather(*(deliver(client, completed) for _ in range(8)))
    outcomes = sorted(r.json()["outcome"] for r in responses)
    assert outcomes == ["duplicate"] * 7 + ["payment_received"]
    assert await scalar(db, "SELECT count(*) FROM payments.payments WHERE account_id = %s",
                        account) == 1
    await outbox_drained(db)
    messages = await published(infra, "payments.v1.received", account_id=str(account))
    assert [m[0]["amount"] for m in messages] == ["25.00"]


async def test_later_charge_refunded_publishes_one_refund_of_the_net_and_its_vat(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    _session_id, intent = await paid_topup(client, fake_stripe, account)
    charge = {"id": f"ch_{uuid.uuid4().hex[:24]}", "object": "charge", "amount": 12_000,
              "amount_refunded": 12_000, "refunded": True, "currency": "gbp",
              "payment_intent": intent}
    refunded = event("charge.refunded", charge)
    assert (await deliver(client, refunded)).json()["outcome"] == "refund_recorded"
    assert (await deliver(client, refunded)).json()["outcome"] == "duplicate"
    # The same refund seen as a refund object (refund.created) changes nothing.
    refund_object = {"id": f"re_{uuid.uuid4().hex[:24]}", "object": "refund", "amount": 12_000,
                     "currency": "gbp", "charge": charge["id"], "payment_intent": intent,
                     "status": "succeeded", "reason": "requested_by_customer"}
    assert (await deliver(client, event("refund.created", refund_object))).json()["outcome"] == (
        "refund_already_recorded")

    await outbox_drained(db)
    refunds = await published(infra, "payments.v1.refunded", account_id=str(account))
    assert len(refunds) == 1
    body, headers = refunds[0]
    assert (body["amount"], body["vat_amount"], body["currency"]) == ("100.00", "20.00", "GBP")
    assert headers["Nats-Msg-Id"] == body["event_id"] == body["refund_id"]
    received = await published(infra, "payments.v1.received", account_id=str(account))
    assert body["payment_id"] == received[0][0]["payment_id"]

    listing = await client.get("/v1/payments", params={"account_id": str(account)},
                               headers=bearer(OPERATOR))
    [payment] = listing.json()["items"]
    assert (payment["status"], payment["refunded_amount"]) == ("refunded", "100.00")


async def test_partial_refunds_in_any_order_add_up_to_what_was_refunded(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    _session_id, intent = await paid_topup(client, fake_stripe, account)

    def cumulative(amount_refunded: int) -> dict[str, Any]:
        return event("charge.refunded", {
            "id": "ch_partial", "object": "charge", "amount": 12_000,
            "amount_refunded": amount_refunded, "currency": "gbp", "payment_intent": intent})

    # Stripe delivers the second refund's event before the first's.
    assert (await deliver(client, cumulative(9_000))).json()["outcome"] == "refund_recorded"
    assert (await deliver(client, cumulative(3_000))).json()["outcome"] == (
        "refund_already_recorded")
    assert (await deliver(client, cumulative(12_000))).json()["outcome"] == "refund_recorded"

    await outbox_drained(db)
    refunds = await published(infra, "payments.v1.refunded", account_id=str(account))
    assert [(b["amount"], b["vat_amount"]) for b, _ in refunds] == [
        ("75.00", "15.00"), ("25.00", "5.00")]


async def test_refund_arriving_before_its_payment_is_applied_when_the_payment_arrives(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    session_id = (await open_topup(client, account, "50.00")).json()["session_id"]
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    refund_object = {"id": f"re_{uuid.uuid4().hex[:24]}", "object": "refund", "amount": 3_000,
                     "currency": "gbp", "payment_intent": intent, "status": "succeeded",
                     "reason": "duplicate"}
    early = await deliver(client, event("refund.created", refund_object))
    assert early.json()["outcome"] == "refund_parked"
    await outbox_drained(db)
    assert await published(infra, "payments.v1.refunded", account_id=str(account)) == []

    completed = event("checkout.session.completed", fake_stripe.paid_session(session_id, intent))
    assert (await deliver(client, completed)).json()["outcome"] == "payment_received"
    await outbox_drained(db)
    received = await published(infra, "payments.v1.received", account_id=str(account))
    refunds = await published(infra, "payments.v1.refunded", account_id=str(account))
    assert [b["amount"] for b, _ in received] == ["50.00"]
    # 30.00 of the 60.00 paid: half the credit and half the VAT.
    assert [(b["amount"], b["vat_amount"], b["reason"]) for b, _ in refunds] == [
        ("25.00", "5.00", "duplicate")]


# -- never trust metadata ------------------------------------------------------------------------


async def test_session_naming_another_account_credits_nothing_and_is_a_security_event(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account, intruder = uuid.uuid4(), uuid.uuid4()
    session_id = (await open_topup(client, account, "100.00")).json()["session_id"]
    session = fake_stripe.paid_session(session_id)
    session["metadata"] = {**session["metadata"], "account_id": str(intruder)}
    forged = event("checkout.session.completed", session)
    response = await deliver(client, forged)
    assert (response.status_code, response.json()["outcome"]) == (200, "security_event")

    kind, claimed = (await (await db.execute(
        "SELECT kind, claimed_account FROM payments.security_events WHERE provider_event_id = %s",
        (forged["id"],))).fetchone()) or (None, None)
    assert (kind, claimed) == ("checkout_session_mismatch", str(intruder))
    assert await scalar(db, "SELECT count(*) FROM payments.payments WHERE account_id = ANY(%s)",
                        [account, intruder]) == 0

    # A session this service never created, and one whose amount was changed.
    stranger = dict(session, id=f"cs_test_{uuid.uuid4().hex}", client_reference_id=None)
    assert (await deliver(client, event("checkout.session.completed", stranger))).json()[
        "outcome"] == "security_event"
    cheaper = fake_stripe.paid_session(session_id, amount_total=100)
    assert (await deliver(client, event("checkout.session.completed", cheaper))).json()[
        "outcome"] == "security_event"
    await outbox_drained(db)
    for who in (account, intruder):
        assert await published(infra, "payments.v1.received", account_id=str(who)) == []


async def test_unpaid_completion_waits_for_the_async_payment(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    session_id = (await open_topup(client, account, "40.00")).json()["session_id"]
    unpaid = fake_stripe.paid_session(session_id, payment_status="unpaid")
    assert (await deliver(client, event("checkout.session.completed", unpaid))).json()[
        "outcome"] == "awaiting_payment"
    listing = (await client.get("/v1/payments", headers=bearer(portal(account)))).json()
    assert [p["status"] for p in listing["items"]] == ["pending"]
    paid = dict(unpaid, payment_status="paid")
    assert (await deliver(client, event("checkout.session.async_payment_succeeded", paid))).json()[
        "outcome"] == "payment_received"
    await outbox_drained(db)
    assert len(await published(infra, "payments.v1.received", account_id=str(account))) == 1


async def test_payment_intent_failure_is_recorded_and_published(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    session_id = (await open_topup(client, account, "10.00")).json()["session_id"]
    metadata = fake_stripe.sessions[session_id]["metadata"]
    intent = {"id": f"pi_{uuid.uuid4().hex[:24]}", "object": "payment_intent", "amount": 1_200,
              "currency": "gbp", "metadata": metadata, "status": "requires_payment_method",
              "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds",
                                     "message": "Your card has insufficient funds."}}
    failed = event("payment_intent.payment_failed", intent)
    assert (await deliver(client, failed)).json()["outcome"] == "payment_failed"
    assert (await deliver(client, failed)).json()["outcome"] == "duplicate"
    await outbox_drained(db)
    [(body, headers)] = await published(infra, "payments.v1.failed", account_id=str(account))
    assert (body["amount"], body["vat_amount"], body["failure_code"]) == (
        "10.00", "2.00", "insufficient_funds")
    assert headers["Nats-Msg-Id"] == body["event_id"] != body["payment_id"]
    listing = (await client.get("/v1/payments", params={"status": "failed"},
                                headers=bearer(portal(account)))).json()
    assert [p["failure_message"] for p in listing["items"]] == ["Your card has insufficient funds."]


# -- signatures and unknown events ---------------------------------------------------------------


async def test_unknown_event_type_is_acknowledged_and_recorded(
    client: httpx.AsyncClient, db: psycopg.AsyncConnection[Any]
) -> None:
    unknown = event("customer.subscription.trial_will_end", {"id": "sub_123", "object": "x"})
    response = await deliver(client, unknown)
    assert (response.status_code, response.json()["outcome"]) == (200, "ignored_event_type")
    assert await scalar(db, "SELECT outcome FROM payments.provider_events WHERE event_id = %s",
                        unknown["id"]) == "ignored_event_type"


async def test_bad_signatures_are_refused_with_400_and_write_nothing(
    client: httpx.AsyncClient, db: psycopg.AsyncConnection[Any]
) -> None:
    payload = event("customer.created", {"id": "cus_1", "object": "customer"})
    body = json.dumps(payload).encode()
    stale = int(time.time()) - 301
    attempts = {
        "missing": {},
        "forged": {"Stripe-Signature": sign_payload(body, "whsec_attacker")},
        "stale": {"Stripe-Signature": sign_payload(body, WEBHOOK_SECRET, stale)},
        "altered": {"Stripe-Signature": sign_payload(body.replace(b"cus_1", b"cus_2"),
                                                     WEBHOOK_SECRET)},
    }
    for name, headers in attempts.items():
        response = await client.post("/v1/webhooks/stripe", content=body,
                                     headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 400, name
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith("/invalid-signature")
    assert await scalar(db, "SELECT count(*) FROM payments.provider_events WHERE event_id = %s",
                        payload["id"]) == 0
    # During a secret roll the previous secret is still live.
    rotated = await deliver(client, body, secret=OLD_WEBHOOK_SECRET)
    assert rotated.status_code == 200


# -- checkout sessions against the fake ---------------------------------------------------------


async def test_checkout_retries_5xx_with_one_idempotency_key_then_succeeds(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.reset()
    fake_stripe.fail_next(times=2, status=503)
    response = await open_topup(client, uuid.uuid4(), "30.00")
    assert response.status_code == 201, response.text
    keys = {key for key, _, _ in fake_stripe.requests}
    assert [status for _, status, _ in fake_stripe.requests] == [503, 503, 200]
    assert len(keys) == 1 and None not in keys


async def test_checkout_rate_limited_with_retry_after_then_succeeds(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.reset()
    fake_stripe.rate_limit_next(retry_after_s=1)
    response = await open_topup(client, uuid.uuid4(), "30.00")
    assert response.status_code == 201, response.text
    assert [status for _, status, _ in fake_stripe.requests] == [429, 200]


async def test_checkout_timeout_is_retried_and_replayed_to_the_same_session(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.reset()
    before = set(fake_stripe.sessions)
    fake_stripe.slow_next(2.5)  # longer than STRIPE_TIMEOUT_S=1
    response = await open_topup(client, uuid.uuid4(), "45.00")
    assert response.status_code == 201, response.text
    created = set(fake_stripe.sessions) - before
    assert created == {response.json()["session_id"]}
    assert any(replayed for _, _, replayed in fake_stripe.requests)


async def test_stored_stripe_500_is_not_retried_and_answers_503(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.reset()
    fake_stripe.fail_next_during_execution()
    response = await open_topup(client, uuid.uuid4(), "30.00")
    assert response.status_code == 503
    assert response.json()["type"].endswith("/payment-provider-unavailable")
    assert [status for _, status, _ in fake_stripe.requests] == [500]


async def test_checkout_idempotency_key_replays_and_refuses_another_body(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    account = uuid.uuid4()
    key = f"topup-{uuid.uuid4()}"
    first = await open_topup(client, account, "60.00", key=key)
    fake_stripe.reset()
    second = await open_topup(client, account, "60.00", key=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert fake_stripe.requests == []  # answered from the recorded checkout
    other = await open_topup(client, account, "61.00", key=key)
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency-key-reused")


async def test_topup_limits_scopes_and_reverse_charge(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    account, other = uuid.uuid4(), uuid.uuid4()
    assert (await open_topup(client, account, "5.00")).status_code == 422
    assert (await open_topup(client, account, "20000.00")).status_code == 422
    assert (await open_topup(client, account, "10.005")).status_code == 422
    assert (await open_topup(client, other, token=portal(account))).status_code == 404
    chosen = await open_topup(client, account, token=portal(account),
                              tax={"country": "FR", "vat_number": "FR40303265045",
                                   "reverse_charge": True})
    assert chosen.status_code == 403

    profile = await client.put(
        f"/v1/payment-profiles/{account}", headers=bearer(OPERATOR),
        json={"currency": "EUR", "tax": {"country": "FR", "vat_number": "FR40303265045",
                                         "reverse_charge": True}})
    assert profile.status_code == 200, profile.text
    own = await open_topup(client, account, "100.00", token=portal(account))
    assert own.status_code == 201, own.text
    assert (own.json()["vat_amount"], own.json()["currency"]) == ("0.00", "EUR")
    assert [line["name"] for line in fake_stripe.line_items[own.json()["session_id"]]] == [
        "Account credit (EUR)"]


# -- invoices ------------------------------------------------------------------------------------


async def publish_invoice_issued(infra: Infra, invoice_id: str, account: uuid.UUID) -> None:
    now = datetime.now(tz=UTC).isoformat()
    message = {
        "event_id": f"issued-{invoice_id}", "invoice_id": invoice_id, "number": f"INV-{invoice_id}",
        "account_id": str(account), "currency": "GBP", "period": "2026-10",
        "lines": [{"description": "SMS", "product": "sms", "quantity": 1000,
                   "unit_price": "0.10", "net_amount": "100.00", "vat_rate": "20",
                   "vat_treatment": "standard", "vat_amount": "20.00"}],
        "vat_breakdown": [{"vat_rate": "20", "vat_treatment": "standard",
                           "net_amount": "100.00", "vat_amount": "20.00"}],
        "subtotal": "100.00", "vat_total": "20.00", "total": "120.00",
        "issued_at": now, "due_at": now,
    }
    nc = await nats.connect(infra.nats_url)
    try:
        await nc.jetstream().publish("invoicing.v1.issued", json.dumps(message).encode(),
                                     headers={"Nats-Msg-Id": message["event_id"]})
    finally:
        await nc.close()


async def test_invoice_checkout_charges_the_invoice_and_settles_it_once(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, infra: Infra,
    db: psycopg.AsyncConnection[Any],
) -> None:
    account = uuid.uuid4()
    invoice_id = f"inv-{uuid.uuid4().hex[:12]}"
    await publish_invoice_issued(infra, invoice_id, account)
    path = f"/v1/checkout/invoices/{invoice_id}"
    opened: dict[str, Any] = {}

    async def checkout_opens() -> bool:
        response = await client.post(path, headers=bearer(portal(account)))
        opened.update(response.json())
        return response.status_code == 201

    await eventually(checkout_opens)
    assert (opened["amount"], opened["vat_amount"]) == ("100.00", "20.00")
    assert (await client.post(path, headers=bearer(portal(uuid.uuid4())))).status_code == 404

    completed = event("checkout.session.completed",
                      fake_stripe.paid_session(opened["session_id"]))
    assert (await deliver(client, completed)).json()["outcome"] == "payment_received"
    assert (await client.post(path, headers=bearer(OPERATOR))).status_code == 409
    await outbox_drained(db)
    [(body, _)] = await published(infra, "payments.v1.received", account_id=str(account))
    assert (body["purpose"], body["invoice_id"], body["amount"], body["vat_amount"]) == (
        "invoice", invoice_id, "100.00", "20.00")


def hubspot_signed(url: str, body: bytes, timestamp_ms: int | None = None,
                   secret: str = HUBSPOT_SECRET) -> dict[str, str]:
    ts = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
    digest = hmac.new(secret.encode(), f"POST{url}".encode() + body + ts.encode(),
                      hashlib.sha256).digest()
    return {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
            "X-HubSpot-Request-Timestamp": ts, "Content-Type": "application/json"}


async def test_hubspot_invoice_paid_batch_is_verified_deduplicated_and_settled_once(
    client: httpx.AsyncClient, fake_hubspot: FakeHubSpot, infra: Infra,
    db: psycopg.AsyncConnection[Any], service: ServiceProcess,
) -> None:
    account = uuid.uuid4()
    invoice_id = f"inv-{uuid.uuid4().hex[:12]}"
    await publish_invoice_issued(infra, invoice_id, account)
    await eventually(lambda: _invoice_known(db, invoice_id))
    fake_hubspot.invoices["9001"] = {"hs_invoice_status": "paid", "hs_currency": "GBP",
                                     "hs_amount_billed": "120.00", "billing_invoice_id": invoice_id}
    batch = [
        {"eventId": 101, "subscriptionId": 7, "portalId": 62515, "occurredAt": 1_700_000_000_000,
         "subscriptionType": "object.propertyChange", "objectTypeId": "0-53",
         "objectId": 9001, "propertyName": "hs_invoice_status", "propertyValue": "paid",
         "attemptNumber": 0},
        {"eventId": 102, "subscriptionId": 8, "portalId": 62515, "occurredAt": 1_700_000_000_000,
         "subscriptionType": "contact.creation", "objectId": 55, "attemptNumber": 0},
    ]
    body = json.dumps(batch).encode()
    url = f"{service.url}/v1/webhooks/hubspot"

    forged = await client.post("/v1/webhooks/hubspot", content=body,
                               headers=hubspot_signed(url, body, secret="not-the-secret"))
    stale = await client.post("/v1/webhooks/hubspot", content=body,
                              headers=hubspot_signed(url, body, int(time.time() * 1000) - 301_000))
    assert (forged.status_code, stale.status_code) == (400, 400)

    first = await client.post("/v1/webhooks/hubspot", content=body,
                              headers=hubspot_signed(url, body))
    assert first.status_code == 200, first.text
    assert [n["outcome"] for n in first.json()["notifications"]] == [
        "payment_received", "ignored_notification"]
    again = await client.post("/v1/webhooks/hubspot", content=body,
                              headers=hubspot_signed(url, body))
    assert [n["outcome"] for n in again.json()["notifications"]] == ["duplicate", "duplicate"]

    await outbox_drained(db)
    [(received, _)] = await published(infra, "payments.v1.received", account_id=str(account))
    assert (received["provider"], received["provider_reference"], received["invoice_id"]) == (
        "hubspot", "9001", invoice_id)
    assert (received["amount"], received["vat_amount"]) == ("100.00", "20.00")


async def _invoice_known(db: psycopg.AsyncConnection[Any], invoice_id: str) -> bool:
    return bool(await scalar(db, "SELECT count(*) FROM payments.invoices WHERE invoice_id = %s",
                             invoice_id))


# -- payment records -----------------------------------------------------------------------------


async def test_payments_listing_pages_newest_first_and_hides_other_tenants(
    client: httpx.AsyncClient, fake_stripe: FakeStripe
) -> None:
    account, neighbour = uuid.uuid4(), uuid.uuid4()
    amounts = ["11.00", "12.00", "13.00", "14.00", "15.00"]
    for amount in amounts:
        await paid_topup(client, fake_stripe, account, amount)
    await paid_topup(client, fake_stripe, neighbour, "99.00")

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"account_id": str(account), "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/payments", params=params, headers=bearer(OPERATOR))).json()
        assert len(page["items"]) <= 2
        seen += [item["amount"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(amounts))

    own = (await client.get("/v1/payments", headers=bearer(portal(account)))).json()
    assert {item["account_id"] for item in own["items"]} == {str(account)}
    assert len(own["items"]) == len(amounts)
    foreign = await client.get("/v1/payments", params={"account_id": str(neighbour)},
                               headers=bearer(portal(account)))
    assert foreign.status_code == 404
    neighbours_payment = (await client.get("/v1/payments", params={"account_id": str(neighbour)},
                                           headers=bearer(OPERATOR))).json()["items"][0]
    direct = await client.get(f"/v1/payments/{neighbours_payment['payment_id']}",
                              headers=bearer(portal(account)))
    assert direct.status_code == 404
    assert (await client.get("/v1/payments")).status_code == 401
    bad = await client.get("/v1/payments", params={"cursor": "not-ours"}, headers=bearer(OPERATOR))
    assert bad.status_code == 400

    later = (await client.get("/v1/payments", headers=bearer(OPERATOR), params={
        "account_id": str(account), "from": datetime.now(tz=UTC).isoformat()})).json()
    assert later["items"] == []


def test_openapi_documents_the_payments_routes(service: ServiceProcess) -> None:
    paths = httpx.get(f"{service.url}/schema/openapi.json").json()["paths"]
    for route in ("/v1/webhooks/stripe", "/v1/webhooks/hubspot", "/v1/checkout/topups",
                  "/v1/checkout/invoices/{invoice_id}", "/v1/payments"):
        assert route in paths



# -- hostile bodies (issue 14, items 1, 3 and 7) --------------------------------------------------


async def deliver_signed(client: httpx.AsyncClient, body: bytes,
                         content_type: str | None = "application/json; charset=utf-8",
                         ) -> httpx.Response:
    headers = {"Stripe-Signature": sign_payload(body, WEBHOOK_SECRET)}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await client.post("/v1/webhooks/stripe", content=body, headers=headers)


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/" + slug)


async def test_a_signed_stripe_event_with_a_nul_is_400_and_stores_nothing(
    client: httpx.AsyncClient, db: psycopg.AsyncConnection[Any]
) -> None:
    payload = event("checkout.session.completed",
                    {"id": "cs_nul", "metadata": {"note": "ref\u0000x"}})
    response = await deliver_signed(client, json.dumps(payload).encode())
    assert_problem(response, 400, "malformed-webhook")
    assert "NUL" in response.json()["detail"]
    assert await scalar(db, "SELECT count(*) FROM payments.provider_events WHERE event_id = %s",
                        payload["id"]) == 0
    # A backslash followed by "u0000" is text like any other, and is stored.
    harmless = event("some.unhandled_type", {"id": "obj_1", "note": "C:\\u0000"})
    ok = await deliver_signed(client, json.dumps(harmless).encode())
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("body", [
    b'{"id": "evt_utf8", "type": "x", "created": 1, "data": {"object": {"n": "caf\xc3\x28"}}}',
    b'{"id": "evt_deep", "type": "x", "created": 1, "data": {"object": '
    + b"[" * 100_000 + b"]" * 100_000 + b"}}",
], ids=["invalid-utf8", "nested-100000"])
async def test_a_signed_stripe_event_that_is_not_utf8_or_nests_without_bound_is_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    assert_problem(await deliver_signed(client, body), 400, "malformed-body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml",
                                          "application/x-www-form-urlencoded", None])
async def test_payments_routes_refuse_bodies_not_labelled_json(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    body = json.dumps(event("some.unhandled_type", {"id": "obj_2"})).encode()
    webhook = await deliver_signed(client, body, content_type)
    assert_problem(webhook, 415, "unsupported-media-type")
    assert webhook.headers["accept-post"] == "application/json"
    headers = bearer(OPERATOR) | ({"Content-Type": content_type} if content_type else {})
    topup = await client.post("/v1/checkout/topups", headers=headers,
                              content=json.dumps({"account_id": str(uuid.uuid4()),
                                                  "amount": "10.00"}).encode())
    assert_problem(topup, 415, "unsupported-media-type")
