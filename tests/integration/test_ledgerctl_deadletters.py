"""ledgerctl dead-letters against a real NATS server: list, show, and retry (republish the
original payload to the original subject, then remove the dead letter)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import msgspec
import nats
import pytest
from nats.js.errors import NotFoundError
from typer.testing import CliRunner

from contracts.deadletter import DeadLetter
from ledger_service.cli import app
from services.broker import stream_config
from tests.conftest import Infra

pytestmark = pytest.mark.integration
cli = CliRunner()


async def publish_dead_letter(nats_url: str, letter: DeadLetter) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in ("USAGE", "DEADLETTER"):
            try:
                await js.stream_info(name)
            except NotFoundError:
                await js.add_stream(stream_config(name))
        await js.publish("deadletter.v1.usage.v1.recorded", msgspec.json.encode(letter),
                         headers={"Nats-Msg-Id": letter.dead_letter_id})
    finally:
        await nc.close()


async def last_usage_message(nats_url: str) -> tuple[dict[str, object], dict[str, str]]:
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.jetstream().get_last_msg("USAGE", "usage.v1.recorded")
        return json.loads(msg.data or b"{}"), dict(msg.headers or {})
    finally:
        await nc.close()


def test_dead_letters_list_show_and_retry(infra: Infra) -> None:
    event_id = f"dl-test-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"event_id": event_id, "account_id": str(uuid.uuid4()),
                          "product": "sms", "quantity": 1, "status": "submitted",
                          "occurred_at": datetime.now(UTC).isoformat()})
    letter = DeadLetter(dead_letter_id=f"dl-{uuid.uuid4().hex}", subject="usage.v1.recorded",
                        reason="rejected", detail="account not found", payload=payload,
                        received_at=datetime.now(UTC), consumer="ledger-usage",
                        stream_sequence=7, deliveries=1, msg_id=event_id)
    asyncio.run(publish_dead_letter(infra.nats_url, letter))
    env = {"NATS_URL": infra.nats_url, "COLUMNS": "250"}

    listed = cli.invoke(app, ["dead-letters", "list", "--subject", "usage.v1.recorded",
                              "--limit", "0"], env=env)
    assert listed.exit_code == 0, listed.output
    assert letter.dead_letter_id in listed.output and "account not found" in listed.output

    shown = cli.invoke(app, ["dead-letters", "show", letter.dead_letter_id], env=env)
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["payload"]["event_id"] == event_id and detail["reason"] == "rejected"

    retried = cli.invoke(app, ["dead-letters", "retry", letter.dead_letter_id], env=env)
    assert retried.exit_code == 0, retried.output
    assert "republished" in retried.output and "removed" in retried.output
    republished, headers = asyncio.run(last_usage_message(infra.nats_url))
    assert republished["event_id"] == event_id
    assert headers.get("Nats-Msg-Id") == f"retry:{letter.dead_letter_id}"
    after = cli.invoke(app, ["dead-letters", "list", "--limit", "0"], env=env)
    assert letter.dead_letter_id not in after.output

    missing = cli.invoke(app, ["dead-letters", "show", "dl-nope"], env=env)
    assert missing.exit_code == 2 and "no dead letter" in missing.output
    nothing = cli.invoke(app, ["dead-letters", "retry"], env=env)
    assert nothing.exit_code == 2
