"""The durable consumer tells JetStream that a slow batch is in progress, and stops as soon as
a message is settled: progress on a naked message would cut short the delay its nak asked
for (tests/integration/test_consumer_ack_wait.py runs the same against a real JetStream)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from psycopg import OperationalError

from services.consumer import ACK, Disposition, DurableConsumer


class FakeMsg:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.metadata = SimpleNamespace(num_delivered=1)
        self.is_acked = False

    async def in_progress(self) -> None:
        self.log.append("progress")

    async def ack(self) -> None:
        self.is_acked = True
        self.log.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.is_acked = True
        self.log.append("nak")


class OneBatch:
    def __init__(self, msgs: list[FakeMsg]) -> None:
        self.msgs: list[FakeMsg] | None = msgs

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
        msgs, self.msgs = self.msgs, None
        if msgs is None:
            await asyncio.sleep(0.01)
            raise NatsTimeoutError
        return msgs

    async def unsubscribe(self) -> None:
        return None


class JetStream:
    def __init__(self, subscription: OneBatch) -> None:
        self.subscription = subscription

    async def add_consumer(self, stream: str, config: Any) -> None:
        return None

    async def pull_subscribe(self, subject: str, **_: Any) -> OneBatch:
        return self.subscription


def consumer(msgs: list[FakeMsg], handle: Any) -> DurableConsumer:
    js = JetStream(OneBatch(msgs))
    return DurableConsumer(SimpleNamespace(jetstream=lambda: js),  # type: ignore[arg-type]
                           stream="USAGE", subject="usage.v1.recorded", durable="d",
                           handle_batch=handle, ack_wait_s=0.15, retry_delay_s=0.5)


async def test_a_slow_batch_is_kept_alive_until_it_is_acked() -> None:
    log: list[str] = []

    async def slow(msgs: Sequence[Any]) -> list[Disposition]:
        await asyncio.sleep(0.4)
        return [ACK for _ in msgs]

    durable = consumer([FakeMsg(log)], slow)
    await durable.start()
    await asyncio.sleep(0.7)
    await durable.stop()
    assert "progress" in log and log[-1] == "ack", log


async def test_a_naked_message_gets_no_progress_while_the_consumer_backs_off() -> None:
    log: list[str] = []

    async def database_away(msgs: Sequence[Any]) -> list[Disposition]:
        await asyncio.sleep(0.4)
        raise OperationalError("connection lost")

    durable = consumer([FakeMsg(log)], database_away)
    await durable.start()
    await asyncio.sleep(0.8)  # inside the 0.5 s back-off after the nak
    await durable.stop()
    assert "progress" in log and "nak" in log, log
    assert "progress" not in log[log.index("nak"):], log


async def test_a_quick_batch_is_never_told_in_progress() -> None:
    log: list[str] = []

    async def quick(msgs: Sequence[Any]) -> list[Disposition]:
        return [ACK for _ in msgs]

    durable = consumer([FakeMsg(log)], quick)
    await durable.start()
    await asyncio.sleep(0.3)
    await durable.stop()
    assert log == ["ack"]
