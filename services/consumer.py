"""A durable JetStream pull consumer that never loses, never blocks, and never hides a message.

- Messages are fetched in batches and handed to the service's batch handler; they are acked
  only after the handler returns (the handler commits its own transaction).
- The handler says per message: ``ack`` (done, or a harmless duplicate), ``dead`` (cannot
  ever be processed: published to ``deadletter.v1.<subject>`` with the reason, then acked),
  or ``retry``.
- A transient failure (database or NATS down) naks the whole batch with a delay: nothing is
  dead-lettered because a dependency is away.
- Any other exception is isolated: the batch is retried one message at a time, so one
  poison message is dead-lettered (after ``deliveries_max`` attempts) while the rest apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import msgspec
import psycopg
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from contracts.deadletter import DeadLetter, DeadLetterReason
from contracts.subjects import DEADLETTER_PREFIX

log = structlog.get_logger(__name__)

# Errors that say "a dependency is away", never "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    ConnectionClosedError,
    NoRespondersError,
    NatsTimeoutError,
    TimeoutError,
    ConnectionError,
)
DETAIL_LENGTH_MAX = 2_000
# What msgspec raises for a payload it cannot read: malformed or mistyped JSON (DecodeError),
# invalid UTF-8 inside a string (UnicodeDecodeError, not a DecodeError) and nesting deeper
# than the stack (RecursionError). Each is the message's fault: a dead letter at once, never
# a retry.
UNREADABLE_PAYLOAD: tuple[type[BaseException], ...] = (
    msgspec.DecodeError, UnicodeDecodeError, RecursionError)


@dataclass(frozen=True, slots=True)
class Disposition:
    action: Literal["ack", "dead", "retry"]
    reason: DeadLetterReason | None = None
    detail: str | None = None


ACK = Disposition("ack")
BatchHandler = Callable[[Sequence[Msg]], Awaitable[Sequence[Disposition]]]
_encoder = msgspec.json.Encoder()


class DurableConsumer:
    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        subject: str,
        durable: str,
        handle_batch: BatchHandler,
        batch_size_max: int = 1_000,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 60.0,
        deliveries_max: int = 5,
        retry_delay_s: float = 1.0,
        ack_pending_max: int = 50_000,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.handle_batch = handle_batch
        self.batch_size_max = batch_size_max
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.deliveries_max = deliveries_max
        self.retry_delay_s = retry_delay_s
        self.ack_pending_max = ack_pending_max
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        js = self.nc.jetstream()
        self._sub = await js.pull_subscribe(
            self.subject,
            durable=self.durable,
            stream=self.stream,
            config=ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_ack_pending=self.ack_pending_max,
                filter_subject=self.subject,
            ),
        )
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")

    async def stop(self) -> None:
        """Finish the batch in hand (so it is acked), then stop fetching."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        # A subscription left open makes the connection's drain wait for ever.
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def _run(self) -> None:
        # The next batch is fetched while this one is being committed (the writer works in
        # its own thread), so the database and NATS are busy at the same time. On stop the
        # batch already fetched is still processed and acked, never left to time out.
        prefetch = asyncio.create_task(self._fetch())
        while True:
            msgs = await prefetch
            if self._stopping.is_set():
                if msgs:
                    await self._process_safely(msgs)
                return
            prefetch = asyncio.create_task(self._fetch())
            if msgs:
                await self._process_safely(msgs)

    async def _fetch(self) -> list[Msg]:
        try:
            return list(await self._sub.fetch(self.batch_size_max, timeout=self.fetch_timeout_s))
        except (NatsTimeoutError, TimeoutError):
            return []
        except (ConnectionClosedError, APIError) as exc:
            log.warning("fetch failed; retrying", consumer=self.durable, error=str(exc))
            await self._pause()
            return []

    async def _process_safely(self, msgs: Sequence[Msg]) -> None:
        try:
            await self.process(msgs)
        except Exception:  # never let the loop die: the messages will be redelivered
            log.exception("batch failed unexpectedly", consumer=self.durable)
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.retry_delay_s)

    async def process(self, msgs: Sequence[Msg]) -> None:
        try:
            dispositions = await self.handle_batch(msgs)
        except TRANSIENT_ERRORS as exc:
            log.warning("dependency unavailable; batch will be redelivered",
                        consumer=self.durable, error=str(exc), messages=len(msgs))
            for msg in msgs:
                await self._nak(msg)
            await self._pause()
            return
        except Exception as exc:
            if len(msgs) == 1:
                await self._retry_or_bury(msgs[0], exc)
                return
            log.warning("batch failed; isolating messages", consumer=self.durable,
                        error=f"{type(exc).__name__}: {exc}")
            for msg in msgs:
                await self.process([msg])
            return
        if len(dispositions) != len(msgs):
            raise AssertionError("a batch handler returns one disposition per message")
        # One after another: an ack is a buffered publish, and gathering thousands of them
        # would cost a task each.
        for msg, disposition in zip(msgs, dispositions, strict=True):
            await self._settle(msg, disposition)

    async def _settle(self, msg: Msg, disposition: Disposition) -> None:
        if disposition.action == "ack":
            await msg.ack()
        elif disposition.action == "dead":
            await self.bury(msg, disposition.reason or "rejected", disposition.detail or "")
        else:
            await self._nak(msg)

    async def _nak(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.nak(delay=self.retry_delay_s)

    async def _retry_or_bury(self, msg: Msg, exc: Exception) -> None:
        deliveries = msg.metadata.num_delivered or 1
        if deliveries >= self.deliveries_max:
            log.error("giving up on a message", consumer=self.durable, deliveries=deliveries,
                      error=f"{type(exc).__name__}: {exc}")
            await self.bury(msg, "retries_exhausted", f"{type(exc).__name__}: {exc}")
        else:
            log.warning("message failed; will retry", consumer=self.durable,
                        deliveries=deliveries, error=f"{type(exc).__name__}: {exc}")
            await self._nak(msg)

    async def bury(self, msg: Msg, reason: DeadLetterReason, detail: str) -> None:
        """Publish the dead letter and wait for JetStream to store it; only then ack."""
        letter = dead_letter(msg, reason, detail, consumer=self.durable)
        await self.nc.jetstream().publish(
            DEADLETTER_PREFIX + msg.subject,
            _encoder.encode(letter),
            headers={"Nats-Msg-Id": letter.dead_letter_id},
        )
        log.warning("dead-lettered", consumer=self.durable, reason=reason, detail=detail[:200],
                    dead_letter_id=letter.dead_letter_id)
        await msg.ack()


def dead_letter(msg: Msg, reason: DeadLetterReason, detail: str, *, consumer: str) -> DeadLetter:
    meta = msg.metadata
    stream_seq = meta.sequence.stream if meta and meta.sequence else None
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    # Stable per original message: re-burying the same message is de-duplicated by JetStream.
    basis = f"{meta.stream if meta else ''}:{stream_seq}:{consumer}"
    return DeadLetter(
        dead_letter_id="dl-" + hashlib.sha256(basis.encode()).hexdigest()[:32],
        subject=msg.subject,
        reason=reason,
        detail=detail[:DETAIL_LENGTH_MAX],
        payload=msg.data.decode("utf-8", errors="replace"),
        received_at=datetime.now(UTC),
        consumer=consumer,
        stream_sequence=stream_seq,
        deliveries=meta.num_delivered if meta else None,
        msg_id=msg_id[:128] if msg_id else None,
    )
