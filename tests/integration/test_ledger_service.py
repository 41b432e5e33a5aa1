"""The ledger service as its own process over real PostgreSQL and NATS, fed by producers that
use plain nats-py (not the project's publisher)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest

from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops-test",
                                                    scopes=["operator"])}


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger-logs")


@pytest.fixture(scope="module")
def ledger_service(infra: Infra, log_dir: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess("ledger_service", infra.service_env()).start(log_dir)
    service.wait_ready()
    yield service
    assert service.stop() == 0, service.logs()


def open_account(service: ServiceProcess, credit: str = "10.00", **settings: object) -> str:
    account_id = str(uuid.uuid4())
    body = {"account_id": account_id, "type": "prepay", "currency": "GBP",
            "tax": {"country": "GB"}, **settings}
    response = httpx.post(f"{service.url}/v1/accounts", json=body, headers=OPERATOR)
    assert response.status_code == 201, response.text
    if credit != "0":
        grant = httpx.post(f"{service.url}/v1/accounts/{account_id}/credits", headers=OPERATOR,
                           json={"kind": "purchased", "amount": credit, "reason": "test"})
        assert grant.status_code == 201, grant.text
    return account_id


def balance(service: ServiceProcess, account_id: str) -> dict[str, object]:
    response = httpx.get(f"{service.url}/v1/accounts/{account_id}/balance", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def usage(account_id: str, event_id: str, **extra: object) -> bytes:
    return json.dumps({"event_id": event_id, "account_id": account_id, "product": "sms",
                       "quantity": 1, "occurred_at": datetime.now(UTC).isoformat(),
                       "status": "submitted", **extra}).encode()


async def publish_usage(nats_url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for msg_id, payload in messages:
            await js.publish_async("usage.v1.recorded", payload, headers={"Nats-Msg-Id": msg_id})
        await js.publish_async_completed()
    finally:
        await nc.close()


def eventually(check, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            check()
            return
        except AssertionError as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout_s}s: {last}")


def test_usage_published_with_plain_nats_is_rated_and_debited_once(
    infra: Infra, ledger_service: ServiceProcess
) -> None:
    account = open_account(ledger_service)
    messages = [(f"u-{account}-{i}", usage(account, f"u-{account}-{i}")) for i in range(50)]
    asyncio.run(publish_usage(infra.nats_url, messages))
    eventually(lambda: _assert_balance(ledger_service, account, "8.025"))  # 10 - 50 x 0.0395
    # republication outside JetStream's duplicate window: a different Nats-Msg-Id, same event
    asyncio.run(publish_usage(infra.nats_url, [(f"again-{m}", p) for m, p in messages[:10]]))
    time.sleep(2)
    _assert_balance(ledger_service, account, "8.025")


def _assert_balance(service: ServiceProcess, account: str, expected: str) -> None:
    assert balance(service, account)["balance"] == expected


def test_bad_usage_goes_to_dead_letters_and_does_not_block(
    infra: Infra, ledger_service: ServiceProcess
) -> None:
    account = open_account(ledger_service)

    async def scenario() -> list[dict[str, object]]:
        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("deadletter.v1.usage.v1.recorded", ordered_consumer=True)
            # Its own garbage (the account in it): the stream holds other tests' letters too.
            await js.publish("usage.v1.recorded", b"{not json " + account.encode())
            await js.publish("usage.v1.recorded", usage(str(uuid.uuid4()), f"ghost-{account}"))
            await js.publish("usage.v1.recorded", usage(account, f"ok-{account}"))
            letters = []
            while len(letters) < 2:
                msg = await sub.next_msg(timeout=20)
                letter = json.loads(msg.data)
                if account in letter["payload"]:
                    letters.append(letter)
            return letters
        finally:
            await nc.close()

    letters = asyncio.run(scenario())
    assert {letter["reason"] for letter in letters} == {"invalid_payload", "rejected"}
    eventually(lambda: _assert_balance(ledger_service, account, "9.9605"))


def test_authorize_request_reply_and_capture(infra: Infra, ledger_service: ServiceProcess) -> None:
    account = open_account(ledger_service, "0.05")

    async def scenario() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        nc = await nats.connect(infra.nats_url)
        try:
            request = {"request_id": f"auth-{account}", "account_id": account,
                       "product": "sms", "quantity": 1}
            first = json.loads((await nc.request("ledger.v1.authorize",
                                                 json.dumps(request).encode(), timeout=10)).data)
            replay = json.loads((await nc.request("ledger.v1.authorize",
                                                  json.dumps(request).encode(), timeout=10)).data)
            refused = json.loads((await nc.request("ledger.v1.authorize", json.dumps(
                {**request, "request_id": f"auth2-{account}"}).encode(), timeout=10)).data)
            return first, replay, refused
        finally:
            await nc.close()

    first, replay, refused = asyncio.run(scenario())
    assert first["approved"] is True and first["amount"] == "0.0395"
    assert replay == first
    assert refused == {**refused, "approved": False, "reason": "insufficient_funds"}
    assert balance(ledger_service, account)["held"] == "0.0395"
    asyncio.run(publish_usage(infra.nats_url, [(f"cap-{account}", usage(
        account, f"cap-{account}", hold_id=first["hold_id"]))]))
    eventually(lambda: _assert_balance(ledger_service, account, "0.0105"))
    assert balance(ledger_service, account)["held"] == "0.00"


def test_payment_received_credits_once_and_entries_reach_the_ledger_stream(
    infra: Infra, ledger_service: ServiceProcess
) -> None:
    account = open_account(ledger_service, "0")
    payment = {"payment_id": f"pay-{account}", "provider": "stripe",
               "provider_reference": "cs_test_1", "account_id": account, "purpose": "topup",
               "amount": "100.00", "vat_amount": "20.00", "currency": "GBP",
               "received_at": datetime.now(UTC).isoformat()}

    async def scenario() -> list[dict[str, object]]:
        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("ledger.v1.events.entry_posted", ordered_consumer=True)
            for attempt in range(3):  # Stripe delivers more than once; so may payments
                await js.publish("payments.v1.received", json.dumps(payment).encode(),
                                 headers={"Nats-Msg-Id": f"{payment['payment_id']}-{attempt}"})
            while True:
                entry = json.loads((await sub.next_msg(timeout=20)).data)
                if entry["account_id"] == account and entry["kind"] == "topup":
                    return [entry]
        finally:
            await nc.close()

    entries = asyncio.run(scenario())
    assert entries[0]["amount"] == "100.00" and entries[0]["balance_after"] == "100.00"
    time.sleep(1)
    assert balance(ledger_service, account)["balance"] == "100.00"


def test_two_intake_processes_never_double_apply(
    infra: Infra, ledger_service: ServiceProcess, log_dir: Path
) -> None:
    second = ServiceProcess("ledger_service", infra.service_env()).start(log_dir)
    second.wait_ready()
    try:
        accounts = [open_account(ledger_service, "100.00") for _ in range(5)]
        messages = [(f"two-{a}-{i}", usage(a, f"two-{a}-{i}")) for a in accounts for i in range(200)]
        # every event published twice under different message ids: both processes see copies
        doubled = messages + [(f"dup-{m}", p) for m, p in messages]
        asyncio.run(publish_usage(infra.nats_url, doubled))
        for account in accounts:
            eventually(lambda a=account: _assert_balance(ledger_service, a, "92.10"), 60)
        time.sleep(1)
        for account in accounts:
            _assert_balance(second, account, "92.10")
    finally:
        assert second.stop() == 0


def test_a_process_killed_mid_batch_loses_and_doubles_nothing(
    infra: Infra, ledger_service: ServiceProcess, log_dir: Path
) -> None:
    accounts = [open_account(ledger_service, "1000.00") for _ in range(10)]
    victim = ServiceProcess("ledger_service", infra.service_env()).start(log_dir)
    victim.wait_ready()
    messages = [(f"kill-{a}-{i}", usage(a, f"kill-{a}-{i}")) for i in range(1000) for a in accounts]
    asyncio.run(publish_usage(infra.nats_url, messages))
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)  # no drain, no ack of what it had in hand
    victim.process.wait()
    for account in accounts:  # 1000 x 0.0395 each, once
        eventually(lambda a=account: _assert_balance(ledger_service, a, "960.50"), 120)


def test_malformed_authorize_requests_get_a_typed_refusal(
    infra: Infra, ledger_service: ServiceProcess
) -> None:
    async def ask(payload: bytes) -> dict[str, object]:
        nc = await nats.connect(infra.nats_url)
        try:
            return json.loads((await nc.request("ledger.v1.authorize", payload, timeout=10)).data)  # type: ignore[no-any-return]
        finally:
            await nc.close()

    for payload in (b"{nope", json.dumps({"request_id": "x", "account_id": "not-a-uuid",
                                           "product": "sms", "quantity": 1}).encode(),
                    json.dumps({"request_id": "y", "account_id": str(uuid.uuid4()),
                                "product": "sms", "quantity": 0}).encode()):
        reply = asyncio.run(ask(payload))
        assert reply["approved"] is False and reply["reason"] == "invalid_request", reply
    unknown = asyncio.run(ask(json.dumps({"request_id": f"u-{uuid.uuid4()}",
                                          "account_id": open_account(ledger_service),
                                          "product": "fax", "quantity": 1}).encode()))
    assert unknown["reason"] == "unknown_product"
