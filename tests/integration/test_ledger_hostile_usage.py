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
# Well under the consumer's 60 s ack wait: a message stuck behind an unsettled one waited that.
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
