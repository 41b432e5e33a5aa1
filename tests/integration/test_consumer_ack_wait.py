"""The durable consumer's ack wait, against a real JetStream: a batch that takes longer than
the wait is kept alive and delivered once; a batch left by a consumer that died comes back to
the next one after the wait (10 s by default, where it used to be a minute)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from services.consumer import ACK, ACK_WAIT_S, Disposition, DurableConsumer
from tests.conftest import Infra

pytestmark = pytest.mark.integration


@dataclass
class Scene:
    nc: NATS
    js: nats.js.JetStreamContext
    stream: str
    subject: str


@contextlib.asynccontextmanager
async def scene(infra: Infra) -> AsyncIterator[Scene]:
    """A connection and a stream of the test's own, removed at the end."""
    nc = await nats.connect(infra.nats_url)
    js = nc.jetstream()
    name = f"TEST_ACK_{uuid.uuid4().hex[:10].upper()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"test.ack.{name.lower()}"]))
    try:
        yield Scene(nc, js, name, f"test.ack.{name.lower()}")
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _publish(js: nats.js.JetStreamContext, subject: str, count: int) -> None:
    for index in range(count):
        await js.publish(subject, str(index).encode())


async def _until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_batch_slower_than_the_ack_wait_is_kept_alive_and_delivered_once(
    infra: Infra,
) -> None:
    seen: Counter[bytes] = Counter()

    async def slow(msgs: Sequence[Msg]) -> list[Disposition]:
        seen.update(msg.data for msg in msgs)
        await asyncio.sleep(3.5)  # well past the 1.2 s wait
        return [ACK for _ in msgs]

    async with scene(infra) as at:
        consumer = DurableConsumer(at.nc, stream=at.stream, subject=at.subject, durable="slow",
                                   handle_batch=slow, batch_size_max=50, ack_wait_s=1.2)
        await _publish(at.js, at.subject, 120)  # more than two batches: one in hand, one ahead
        await consumer.start()
        try:
            await _until(lambda: len(seen) == 120, 30)
            deadline = time.monotonic() + 15
            while (info := await at.js.consumer_info(at.stream, "slow")).num_ack_pending:
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.2)
            assert info.num_redelivered == 0, info
            assert set(seen.values()) == {1}, "a message was delivered again under the handler"
        finally:
            await consumer.stop()


async def test_what_a_dead_consumer_had_in_hand_comes_back_after_the_ack_wait(
    infra: Infra,
) -> None:
    applied: Counter[bytes] = Counter()
    deliveries: set[int] = set()

    async def apply(msgs: Sequence[Msg]) -> list[Disposition]:
        applied.update(msg.data for msg in msgs)
        deliveries.update(msg.metadata.num_delivered for msg in msgs)
        return [ACK for _ in msgs]

    async with scene(infra) as at:
        def durable() -> DurableConsumer:
            return DurableConsumer(at.nc, stream=at.stream, subject=at.subject,
                                   durable="shared", handle_batch=apply, ack_wait_s=2.0)

        first = durable()  # makes the durable with its 2 s wait
        await first.start()
        await first.stop()
        # A consumer fetches a batch and dies before acking any of it (its connection goes,
        # as a kill -9 would take it).
        await _publish(at.js, at.subject, 40)
        dead = await nats.connect(infra.nats_url)
        held = await (await dead.jetstream().pull_subscribe(
            at.subject, durable="shared", stream=at.stream)).fetch(40, timeout=5)
        fetched_at = time.monotonic()
        assert len(held) == 40
        await dead.close()

        second = durable()
        await second.start()
        try:
            await _until(lambda: len(applied) == 40, 30)
            assert time.monotonic() - fetched_at >= 1.9, "delivered again before the wait"
            assert set(applied.values()) == {1}
            assert deliveries == {2}  # each the second time: after the dead one's
            info = await at.js.consumer_info(at.stream, "shared")
            assert info.num_ack_pending == 0 and info.config.ack_wait == 2.0, info
        finally:
            await second.stop()


async def test_the_default_ack_wait_is_set_on_the_durable(infra: Infra) -> None:
    async def apply(msgs: Sequence[Msg]) -> list[Disposition]:
        return [ACK for _ in msgs]

    async with scene(infra) as at:
        consumer = DurableConsumer(at.nc, stream=at.stream, subject=at.subject,
                                   durable="default", handle_batch=apply)
        await consumer.start()
        try:
            info = await at.js.consumer_info(at.stream, "default")
            assert info.config.ack_wait == ACK_WAIT_S == 10.0
        finally:
            await consumer.stop()
