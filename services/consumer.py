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
- Every path has a delivery limit. The durable consumer carries ``max_deliver``
  (``server_deliveries_max``), so JetStream itself never redelivers a message for ever; and
  the delivery it says is the last is dead-lettered (``retries_exhausted``) whatever went
  wrong, a dependency outage included, so that no message just disappears. Transient naks
  back off (``retry_delay_s`` doubling to TRANSIENT_RETRY_DELAY_S_MAX) so that the limit
  stands for hours of outage, not minutes.
- One message that cannot be settled (its dead letter refused, say) never holds up the rest
  of its batch: they are settled, it is naked and comes back later.
- A dead letter always fits in a NATS message: its copy of the payload is cut past
  PAYLOAD_KEPT_BYTES_MAX, with the original's size and SHA-256 (contracts.deadletter).
- What a process that dies had in hand comes back to the others after ``ack_wait_s``
  (ACK_WAIT_S, 10 s), not a minute later: a live process keeps its slow batches (and the one
  fetched ahead) from expiring by telling JetStream they are in progress (+WPI) every third
  of that. A redelivery that still overlaps is a duplicate, which every handler settles as
  done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import psycopg
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, ServiceUnavailableError

from contracts.deadletter import PAYLOAD_KEPT_BYTES_MAX, DeadLetter, DeadLetterReason
from contracts.subjects import DEADLETTER_PREFIX
from services.backoff import Backoff

log = structlog.get_logger(__name__)

class NotNow(Exception):
    """A handler cannot take this batch now, through no fault of its messages (the ledger
    process no longer owns their partition, say): naked with back-off, never dead-lettered."""


# Errors that say "a dependency is away", never "this message is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    NotNow,
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
# Setting a consumer up in a JetStream cluster that is electing leaders (a node just died or
# came back): how long to keep asking, and what counts as "not yet" rather than "no".
SETUP_TIMEOUT_S = 60.0
SETUP_RETRIABLE: tuple[type[BaseException], ...] = (
    NatsTimeoutError, TimeoutError, NoRespondersError, ServiceUnavailableError)
# JetStream's own limit on deliveries of one message (the consumer's max_deliver). Far above
# deliveries_max, because transient failures (PostgreSQL away) count too: with naks backing
# off to TRANSIENT_RETRY_DELAY_S_MAX, 1,000 deliveries are about eight hours of outage.
SERVER_DELIVERIES_MAX = 1_000
# How long JetStream waits for the ack of a delivered message before it delivers it again:
# the delay before a dead process's messages in hand are applied by another. Batches take
# well under a second; a slower one is kept alive by in-progress acks (see DurableConsumer).
ACK_WAIT_S = 10.0
TRANSIENT_RETRY_DELAY_S_MAX = 30.0
_TRUNCATION_MARKER = "\u2026[truncated: {size} bytes, sha256 {digest}]"
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
        ack_wait_s: float = ACK_WAIT_S,
        deliveries_max: int = 5,
        retry_delay_s: float = 1.0,
        ack_pending_max: int = 50_000,
        server_deliveries_max: int = SERVER_DELIVERIES_MAX,
        setup_timeout_s: float = SETUP_TIMEOUT_S,
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
        self.server_deliveries_max = max(server_deliveries_max, deliveries_max)
        self.setup_timeout_s = setup_timeout_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keep_alive_task: asyncio.Task[None] | None = None
        # Batches fetched and not yet settled, with when each was last told "in progress".
        self._in_hand: dict[int, tuple[float, Sequence[Msg]]] = {}

    async def start(self) -> None:
        js = self.nc.jetstream()
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.ack_pending_max,
            max_deliver=self.server_deliveries_max,
            filter_subject=self.subject,
        )
        deadline = asyncio.get_running_loop().time() + self.setup_timeout_s
        backoff = Backoff(0.2, 2.0)
        while True:
            try:
                await self._set_up(js, config)
                break
            except SETUP_RETRIABLE as exc:
                # In a JetStream cluster, the consumer's (or the stream's) RAFT group may be
                # electing a leader: the request times out or is answered 503 for a few
                # seconds. A service starting then must wait, not crash.
                if asyncio.get_running_loop().time() > deadline:
                    raise
                wait_s = backoff.next_wait_s()
                log.info("JetStream not ready for the consumer; retrying",
                         consumer=self.durable, error=repr(exc), retry_in_s=round(wait_s, 2))
                await asyncio.sleep(wait_s)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")
        self._keep_alive_task = asyncio.create_task(
            self._keep_alive(), name=f"consumer-keep-alive:{self.durable}")

    async def _set_up(self, js: Any, config: ConsumerConfig) -> None:
        # Create, or update a durable made before max_deliver was set (pull_subscribe leaves
        # an existing consumer as it is).
        try:
            await js.add_consumer(self.stream, config)
        except ServiceUnavailableError:
            raise
        except APIError as exc:
            log.warning("consumer config not updated", consumer=self.durable, error=str(exc))
        self._sub = await js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=config)

    async def stop(self) -> None:
        """Finish the batch in hand (so it is acked), then stop fetching."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._keep_alive_task is not None:
            self._keep_alive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_alive_task
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
            msgs = list(await self._sub.fetch(self.batch_size_max, timeout=self.fetch_timeout_s))
            if msgs:
                self._in_hand[id(msgs)] = (asyncio.get_running_loop().time(), msgs)
            return msgs
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
        finally:
            self._in_hand.pop(id(msgs), None)

    async def _keep_alive(self) -> None:
        """Every third of the ack wait, tell JetStream that the batches held longer than that
        are still being worked on, so that only a dead process's messages are redelivered."""
        interval_s = self.ack_wait_s / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            now = loop.time()
            for key, (since, msgs) in list(self._in_hand.items()):
                if now - since < interval_s or key not in self._in_hand:
                    continue
                self._in_hand[key] = (now, msgs)
                # Only the unsettled: progress on a naked message would cut short its delay.
                # A progress that is lost only means a duplicate.
                for msg in msgs:
                    if not msg.is_acked:
                        with contextlib.suppress(Exception):
                            await msg.in_progress()

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
                if _deliveries(msg) >= self.server_deliveries_max:
                    # JetStream will not deliver it again: keep it as a dead letter.
                    await self._settle_safely(msg, Disposition(
                        "dead", "retries_exhausted",
                        f"dependency unavailable: {type(exc).__name__}: {exc}"))
                else:
                    await self._nak(msg, self._transient_delay_s(msg))
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
            await self._settle_safely(msg, disposition)

    async def _settle_safely(self, msg: Msg, disposition: Disposition) -> None:
        """Settle one message; if that fails, nak it alone and let the batch go on."""
        try:
            await self._settle(msg, disposition)
        except Exception as exc:
            log.error("message not settled; it will be redelivered", consumer=self.durable,
                      action=disposition.action, deliveries=_deliveries(msg),
                      error=f"{type(exc).__name__}: {exc}")
            await self._nak(msg)

    async def _settle(self, msg: Msg, disposition: Disposition) -> None:
        if disposition.action == "ack":
            await msg.ack()
        elif disposition.action == "dead":
            await self.bury(msg, disposition.reason or "rejected", disposition.detail or "")
        elif _deliveries(msg) >= self.deliveries_max:
            await self.bury(msg, "retries_exhausted", disposition.detail or "retried too often")
        else:
            await self._nak(msg)

    def _transient_delay_s(self, msg: Msg) -> float:
        doublings = min(_deliveries(msg) - 1, 16)
        return min(self.retry_delay_s * 2**doublings, TRANSIENT_RETRY_DELAY_S_MAX)

    async def _nak(self, msg: Msg, delay_s: float | None = None) -> None:
        with contextlib.suppress(Exception):
            await msg.nak(delay=self.retry_delay_s if delay_s is None else delay_s)

    async def _retry_or_bury(self, msg: Msg, exc: Exception) -> None:
        deliveries = _deliveries(msg)
        if deliveries >= self.deliveries_max:
            log.error("giving up on a message", consumer=self.durable, deliveries=deliveries,
                      error=f"{type(exc).__name__}: {exc}")
            await self._settle_safely(msg, Disposition(
                "dead", "retries_exhausted", f"{type(exc).__name__}: {exc}"))
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


def _deliveries(msg: Msg) -> int:
    meta = msg.metadata
    return (meta.num_delivered if meta else None) or 1


def kept_payload(data: bytes) -> tuple[str, bool]:
    """The payload as text for a dead letter, and whether it had to be cut to fit
    PAYLOAD_KEPT_BYTES_MAX (measured as JSON, escapes included)."""
    text = data.decode("utf-8", errors="replace")
    encoded = len(_encoder.encode(text))
    if encoded <= PAYLOAD_KEPT_BYTES_MAX:
        return text, False
    marker = _TRUNCATION_MARKER.format(size=len(data), digest=hashlib.sha256(data).hexdigest())
    budget = PAYLOAD_KEPT_BYTES_MAX - len(_encoder.encode(marker))
    # Shrink in proportion to the overshoot, then by a tenth until it fits: a few encodes.
    keep = len(text) * budget // encoded
    while keep > 0 and len(_encoder.encode(text[:keep])) > budget:
        keep = keep * 9 // 10
    return text[:keep] + marker, True


# Set by a forwarder on the copy it publishes (ledger_service/messaging.py forwarded_headers).
ORIGINAL_SUBJECT_HEADER = "Billing-Original-Subject"
ORIGINAL_MSG_ID_HEADER = "Billing-Original-Msg-Id"


def dead_letter(msg: Msg, reason: DeadLetterReason, detail: str, *, consumer: str) -> DeadLetter:
    meta = msg.metadata
    stream_seq = meta.sequence.stream if meta and meta.sequence else None
    headers = msg.headers or {}
    # A message forwarded on our side (the ledger's partition routing) is dead-lettered as
    # the producer sent it: its subject and message id, so the producer's id finds it.
    msg_id = headers.get(ORIGINAL_MSG_ID_HEADER) or headers.get("Nats-Msg-Id")
    # Stable per original message: re-burying the same message is de-duplicated by JetStream.
    basis = f"{meta.stream if meta else ''}:{stream_seq}:{consumer}"
    payload, truncated = kept_payload(msg.data)
    return DeadLetter(
        dead_letter_id="dl-" + hashlib.sha256(basis.encode()).hexdigest()[:32],
        subject=headers.get(ORIGINAL_SUBJECT_HEADER) or msg.subject,
        reason=reason,
        detail=detail[:DETAIL_LENGTH_MAX],
        payload=payload,
        received_at=datetime.now(UTC),
        consumer=consumer,
        stream_sequence=stream_seq,
        deliveries=meta.num_delivered if meta else None,
        msg_id=msg_id[:128] if msg_id else None,
        payload_truncated=truncated,
        payload_bytes=len(msg.data),
        payload_sha256=hashlib.sha256(msg.data).hexdigest(),
    )
