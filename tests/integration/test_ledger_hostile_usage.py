"""Garbage usage big enough that its dead letter would not fit in a NATS message.

Issue 14, item 2: an invalid usage payload of ~200 KB of control bytes became a dead letter of
1.2 MB (JSON spells each control byte in six), over NATS' 1 MiB limit. Publishing it failed,
the message was never acked, came back every 60 s for ever (no max_deliver), never showed in
`ledgerctl dead-letters`, and the messages batched behind it waited 60 s each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from contracts.deadletter import PAYLOAD_KEPT_BYTES_MAX
from ledger_service.cli import app
from services.consumer import SERVER_DELIVERIES_MAX
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_service import (  # noqa: F401 (fixtures)
    balance,
    ledger_service,
    log_dir,
    open_account,
    publish_usage,
    usage,
)

pytestmark = pytest.mark.integration
cli = CliRunner()
# Prompt. That nothing waited for an ack wait (an unsettled message came back after it) is
# asserted without a clock: every message is settled on its first delivery.
PROMPT_S = 30.0


def control_bytes(size: int) -> bytes:
    return bytes(1 + i % 31 for i in range(size))  # 0x01..0x1f, never a valid JSON document


async def dead_letters_for(nats_url: str, sha256s: set[str],
                           timeout_s: float) -> list[dict[str, Any]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("deadletter.v1.usage.v1.recorded", ordered_consumer=True)
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(sha256s) and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            except nats.errors.TimeoutError:
                break
            letter = json.loads(msg.data)
            if letter.get("payload_sha256") in sha256s:
                found[letter["payload_sha256"]] = {**letter, "size": len(msg.data)}
        return list(found.values())
    finally:
        await nc.close()


async def usage_consumer(nats_url: str) -> Any:
    nc = await nats.connect(nats_url)
    try:
        return await nc.jetstream().consumer_info("USAGE", "ledger-usage")
    finally:
        await nc.close()


def test_oversized_garbage_becomes_a_visible_dead_letter_and_blocks_nothing(
    infra: Infra, ledger_service: ServiceProcess,  # noqa: F811
) -> None:
    account = open_account(ledger_service)
    garbage = {"200k": control_bytes(200_000), "900k": control_bytes(900_000)}
    sha256s = {hashlib.sha256(body).hexdigest() for body in garbage.values()}
    messages = []
    for index, (name, body) in enumerate(garbage.items()):
        valid = f"around-{name}-{uuid.uuid4().hex[:8]}"
        messages += [(f"{valid}-before", usage(account, f"{valid}-before")),
                     (f"garbage-{name}-{index}-{uuid.uuid4().hex[:8]}", body),
                     (f"{valid}-after", usage(account, f"{valid}-after"))]
    started = time.monotonic()
    asyncio.run(publish_usage(infra.nats_url, messages))

    # The four valid messages apply promptly: 10.00 - 4 x 0.0395.
    while balance(ledger_service, account)["balance"] != "9.842":
        assert time.monotonic() - started < PROMPT_S, (
            balance(ledger_service, account), asyncio.run(usage_consumer(infra.nats_url)))
        time.sleep(0.2)
    letters = asyncio.run(dead_letters_for(infra.nats_url, sha256s, PROMPT_S))
    assert len(letters) == 2, letters
    for letter in letters:
        assert letter["reason"] == "invalid_payload"
        assert letter["payload_truncated"] is True
        assert letter["payload_bytes"] in (200_000, 900_000)
        assert letter["payload"].endswith(f"sha256 {letter['payload_sha256']}]")
        assert letter["size"] < PAYLOAD_KEPT_BYTES_MAX + 16 * 1024  # fits in any NATS message
        assert letter["deliveries"] == 1

    listed = cli.invoke(app, ["dead-letters", "list", "--subject", "usage.v1.recorded",
                              "--limit", "0"],
                        env={"NATS_URL": infra.nats_url, "COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("[payload truncated]") >= 2, listed.output
    retried = cli.invoke(app, ["dead-letters", "retry", letters[0]["dead_letter_id"]],
                         env={"NATS_URL": infra.nats_url, "COLUMNS": "250"})
    assert retried.exit_code == 1 and "truncated" in retried.output, retried.output

    # Nothing left unacknowledged to come back, and JetStream itself has a delivery limit.
    info = asyncio.run(usage_consumer(infra.nats_url))
    assert info.num_ack_pending == 0 and info.num_redelivered == 0, info
    assert info.config.max_deliver == SERVER_DELIVERIES_MAX


# ------------------------------------------------------------------ text and bodies


def test_usage_with_a_nul_in_its_reference_is_a_dead_letter_not_an_entry(
    infra: Infra, ledger_service: ServiceProcess,  # noqa: F811
) -> None:
    account = open_account(ledger_service)
    hostile = usage(account, f"nul-{uuid.uuid4().hex[:8]}", reference="ref\u0000x")
    assert b"\\u0000" in hostile
    fine = usage(account, f"tab-{uuid.uuid4().hex[:8]}", reference="tab\there")
    asyncio.run(publish_usage(infra.nats_url, [(f"m-{uuid.uuid4().hex}", hostile),
                                               (f"m-{uuid.uuid4().hex}", fine)]))
    letters = asyncio.run(dead_letters_for(infra.nats_url,
                                           {hashlib.sha256(hostile).hexdigest()}, PROMPT_S))
    assert len(letters) == 1 and letters[0]["reason"] == "invalid_payload", letters
    assert "$.reference" in letters[0]["detail"]
    deadline = time.monotonic() + PROMPT_S
    while balance(ledger_service, account)["balance"] != "9.9605":  # only the tab one billed
        assert time.monotonic() < deadline, balance(ledger_service, account)
        time.sleep(0.2)


def test_ledger_routes_refuse_nul_text_non_json_bodies_bad_utf8_and_deep_nesting(
    ledger_service: ServiceProcess,  # noqa: F811
) -> None:
    import httpx

    from tests.integration.test_ledger_service import OPERATOR

    account = open_account(ledger_service)
    url = f"{ledger_service.url}/v1/accounts/{account}"
    credit = {"kind": "bonus", "amount": "1.00", "reason": "ref\u0000x"}
    adjustment = {"direction": "credit", "amount": "1.00", "memo": "memo with \u0000 inside"}
    for path, body, field in (("/credits", credit, "reason"),
                              ("/adjustments", adjustment, "memo")):
        refused = httpx.post(url + path, json=body, headers=OPERATOR)
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in refused.json()["errors"]] == [field]
    assert balance(ledger_service, account)["balance"] == "10.00"

    good = json.dumps({"kind": "bonus", "amount": "1.00", "reason": "welcome"}).encode()
    for content_type in ("text/plain", "application/xml", "application/x-www-form-urlencoded",
                         None):
        headers = {**OPERATOR, **({"Content-Type": content_type} if content_type else {})}
        response = httpx.post(url + "/credits", content=good, headers=headers)
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["type"].endswith("/unsupported-media-type")
        assert response.headers["accept-post"] == "application/json"
    patched = httpx.patch(url, content=b"name=x", headers={
        **OPERATOR, "Content-Type": "application/x-www-form-urlencoded"})
    assert patched.status_code == 415 and patched.headers["accept-patch"] == "application/json"
    for body in (b'{"kind": "bonus", "amount": "1.00", "reason": "caf\xc3\x28"}',
                 b'{"kind": "bonus", "amount": "1.00", "reason": ' + b"[" * 100_000
                 + b"]" * 100_000 + b"}"):
        response = httpx.post(url + "/credits", content=body,
                              headers={**OPERATOR, "Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["type"].endswith("/malformed-body")
    # Routes without a body are as they were.
    closed = httpx.post(url + "/close", headers=OPERATOR)
    assert closed.status_code != 415, closed.text
    assert balance(ledger_service, account)["balance"] == "10.00"
