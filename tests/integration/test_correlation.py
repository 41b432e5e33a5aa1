"""A message published with a correlation id (by a producer using plain nats-py) reaches a
FastStream consumer with that id, and every log line the consumer writes carries it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import nats
import pytest
import structlog
from faststream.nats import NatsMessage

from services.broker import create_broker, ensure_streams
from services.logging import configure_logging
from tests.conftest import Infra

pytestmark = pytest.mark.integration


async def test_correlation_id_reaches_consumer_and_its_log_lines(
    infra: Infra, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="test", fmt="json")
    broker = create_broker(infra.nats_url)
    subject = f"catalog.v1.test.{uuid.uuid4().hex}"
    received: asyncio.Queue[str | None] = asyncio.Queue()
    log = structlog.get_logger("consumer")

    @broker.subscriber(subject)
    async def consume(body: dict[str, str]) -> None:
        log.info("consumed", body=body)
        received.put_nowait(structlog.contextvars.get_contextvars().get("correlation_id"))

    await broker.connect()
    await ensure_streams(broker)
    await broker.start()
    try:
        producer = await nats.connect(infra.nats_url)
        try:
            await producer.publish(
                subject, b'{"hello": "world"}', headers={"correlation_id": "corr-123"}
            )
            await producer.flush()
        finally:
            await producer.close()
        assert await asyncio.wait_for(received.get(), 5) == "corr-123"
    finally:
        await broker.stop()
        logging.getLogger().handlers.clear()

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    consumed = [line for line in lines if line.get("event") == "consumed"]
    assert consumed, lines
    assert consumed[0]["correlation_id"] == "corr-123"
    assert consumed[0]["subject"] == subject


async def test_publish_from_a_handler_forwards_the_correlation_id(infra: Infra) -> None:
    broker = create_broker(infra.nats_url)
    first = f"catalog.v1.first.{uuid.uuid4().hex}"
    second = f"catalog.v1.second.{uuid.uuid4().hex}"
    seen: asyncio.Queue[str] = asyncio.Queue()

    @broker.subscriber(first)
    async def relay(body: dict[str, str]) -> None:
        await broker.publish(body, second)

    @broker.subscriber(second)
    async def sink(body: dict[str, str], msg: NatsMessage) -> None:
        seen.put_nowait(msg.correlation_id)

    await broker.connect()
    await broker.start()
    try:
        with structlog.contextvars.bound_contextvars(correlation_id="chain-42"):
            await broker.publish({"a": "b"}, first)
        assert await asyncio.wait_for(seen.get(), 5) == "chain-42"
    finally:
        await broker.stop()
