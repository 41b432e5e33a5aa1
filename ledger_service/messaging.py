"""The ledger on NATS: usage intake, authorize, payments and catalogue consumers, the expiry
sweeper, and the publisher of ledger.v1.events.* from the event store's notification log.

Every write goes through ``Writer``, one thread: the domain is synchronous, and one writer per
process means an account is never changed by two threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts.catalog import PricesUpdated
from contracts.ledger import AuthorizeReply, AuthorizeRequest
from contracts.payments import PaymentReceived, PaymentRefunded
from contracts.subjects import (
    CATALOG_PRICES_UPDATED,
    LEDGER_AUTHORIZE,
    PAYMENTS_RECEIVED,
    PAYMENTS_REFUNDED,
    USAGE_RECORDED,
)
from contracts.usage import UsageRecorded
from ledger_service import metrics
from ledger_service.app import accounts, intake
from ledger_service.app.ledger import AccountNotFound, Ledger
from ledger_service.domain.errors import LedgerError
from services.consumer import ACK, UNREADABLE_PAYLOAD, Disposition, DurableConsumer

log = structlog.get_logger(__name__)
T = TypeVar("T")

INTAKE_BATCH_SIZE_MAX = 5_000
AUTHORIZE_BATCH_SIZE_MAX = 512
AUTHORIZE_DRAIN_S = 10.0  # at stop, how long the requests already taken may take
SWEEP_INTERVAL_S = 5.0
AUTHORIZE_QUEUE_GROUP = "ledger-authorize"


class Priority(IntEnum):
    """Who goes first when the writer is busy: a sender waiting to send, then a person
    waiting for a page, then bulk intake (which is acked later and can wait)."""

    AUTHORIZE = 0
    HTTP = 1
    INTAKE = 2


class Writer:
    """The one thread that changes accounts in this process, serving work by priority.

    A running batch is never interrupted, but queued work is taken most urgent first, so an
    authorization waits for at most the batch in progress, not for the intake backlog.
    """

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._depths = metrics.WRITER_QUEUE_DEPTHS  # indexed by Priority
        self._thread = threading.Thread(target=self._work, name="ledger-writer", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., T], *args: Any, priority: Priority = Priority.HTTP) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = structlog.contextvars.get_contextvars()
        self._depths[priority].inc()
        self._queue.put((int(priority), next(self._sequence), (loop, future, context, fn, args)))
        return await future

    def _work(self) -> None:
        while True:
            priority, _, job = self._queue.get()
            if job is None:
                return
            self._depths[priority].dec()
            loop, future, context, fn, args = job
            try:
                with structlog.contextvars.bound_contextvars(**context):
                    result = fn(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def close(self) -> None:
        self._queue.put((int(Priority.INTAKE) + 1, next(self._sequence), None))
        self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# ------------------------------------------------------------------ usage intake


class UsageIntake:
    """Batches of usage.v1.recorded: decode, apply in one transaction, then ack."""

    def __init__(self, ledger: Ledger, writer: Writer) -> None:
        self.ledger = ledger
        self.writer = writer
        self._decoder = msgspec.json.Decoder(UsageRecorded)

    async def handle(self, msgs: Sequence[Msg]) -> list[Disposition]:
        dispositions: list[Disposition | None] = [None] * len(msgs)
        decoded: list[UsageRecorded] = []
        positions: list[int] = []
        for index, msg in enumerate(msgs):
            try:
                decoded.append(self._decoder.decode(msg.data))
                positions.append(index)
            except UNREADABLE_PAYLOAD as exc:
                dispositions[index] = Disposition("dead", "invalid_payload", str(exc))
        if decoded:
            metrics.INTAKE_BATCH_SIZE.observe(len(decoded))
            verdicts = await self.writer.call(intake.apply_usage, self.ledger, decoded,
                                              priority=Priority.INTAKE)
            for index, verdict in zip(positions, verdicts, strict=True):
                dispositions[index] = (
                    Disposition("dead", "rejected", verdict.detail)
                    if verdict.outcome == "dead" else ACK
                )
        return [d or ACK for d in dispositions]


# ------------------------------------------------------------------ authorize


class Authorizer:
    """ledger.v1.authorize: requests that arrive together commit together (group commit).

    While one batch is being written, the next ones queue; each write is one transaction for
    all of them, so throughput grows with load while a lone request waits for one commit.
    """

    def __init__(self, ledger: Ledger, writer: Writer) -> None:
        self.ledger = ledger
        self.writer = writer
        # (request, the message to answer); the batcher replies itself, so a request costs
        # no task and no future of its own (a fifth of the event loop's time per request).
        self._queue: asyncio.Queue[tuple[AuthorizeRequest, Msg]] = asyncio.Queue()
        self._decoder = msgspec.json.Decoder(AuthorizeRequest)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None

    async def start(self, nc: NATS) -> None:
        self._task = asyncio.create_task(self._run(), name="authorize-batcher")
        self._subscription = await nc.subscribe(
            LEDGER_AUTHORIZE, queue=AUTHORIZE_QUEUE_GROUP, cb=self._on_request)

    async def stop(self) -> None:
        """Take no new request, answer every one taken, then stop."""
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.drain()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), AUTHORIZE_DRAIN_S)
            except TimeoutError:  # the writer is stuck (the database?): requesters time out
                log.warning("authorize requests left unanswered at stop",  # and retry; their
                            requests=self._queue.qsize())  # request ids make that safe
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _on_request(self, msg: Msg) -> None:
        # nats-py awaits callbacks one at a time, so this only decodes and queues.
        try:
            request = self._decoder.decode(msg.data)
        except UNREADABLE_PAYLOAD as exc:
            await self._reply(msg, AuthorizeReply(approved=False, reason="invalid_request",
                                                  detail=str(exc)[:500]))
            return
        self._queue.put_nowait((request, msg))

    async def _reply(self, msg: Msg, reply: AuthorizeReply) -> None:
        metrics.count_reply(reply)
        if not msg.reply:
            return
        try:
            await msg.respond(self._encoder.encode(reply))
        except Exception:  # the requester times out and retries; its request_id is stored
            log.warning("authorize reply not sent", exc_info=True,
                        correlation_id=(msg.headers or {}).get("correlation_id"))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < AUTHORIZE_BATCH_SIZE_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            requests = [request for request, _ in batch]
            metrics.AUTHORIZE_BATCH_SIZE.observe(len(batch))
            try:
                replies = await self.writer.call(intake.authorize, self.ledger, requests,
                                                 priority=Priority.AUTHORIZE)
            except Exception as exc:  # the sender must hear something: a refusal, not silence
                log.exception("authorize batch failed", requests=len(batch))
                replies = [AuthorizeReply(approved=False, reason="invalid_request",
                                          detail=f"ledger unavailable: {type(exc).__name__}")
                           for _ in batch]
            for (_, msg), reply in zip(batch, replies, strict=True):
                await self._reply(msg, reply)
                self._queue.task_done()


# ------------------------------------------------------------------ payments, catalogue


class PaymentsConsumer:
    """payments.v1.received credits the account, payments.v1.refunded takes it back; once."""

    def __init__(self, ledger: Ledger, writer: Writer) -> None:
        self.ledger = ledger
        self.writer = writer

    async def handle_received(self, msgs: Sequence[Msg]) -> list[Disposition]:
        return [await self._one(msg, PaymentReceived, accounts.credit_payment) for msg in msgs]

    async def handle_refunded(self, msgs: Sequence[Msg]) -> list[Disposition]:
        return [await self._one(msg, PaymentRefunded, accounts.reverse_payment) for msg in msgs]

    async def _one(self, msg: Msg, message_type: type[Any],
                   apply: Callable[[Ledger, Any], bool]) -> Disposition:
        try:
            message = msgspec.json.decode(msg.data, type=message_type)
        except UNREADABLE_PAYLOAD as exc:
            return Disposition("dead", "invalid_payload", str(exc))
        try:
            applied = await self.writer.call(apply, self.ledger, message)
        except (LedgerError, AccountNotFound) as exc:
            return Disposition("dead", "rejected", f"{type(exc).__name__}: {exc}")
        log.info("payment applied" if applied else "payment already applied",
                 subject=msg.subject, payment_id=getattr(message, "payment_id", None))
        return ACK


class CatalogueConsumer:
    def __init__(self, ledger: Ledger, writer: Writer) -> None:
        self.ledger = ledger
        self.writer = writer

    async def handle(self, msgs: Sequence[Msg]) -> list[Disposition]:
        dispositions = []
        for msg in msgs:
            try:
                update = msgspec.json.decode(msg.data, type=PricesUpdated)
            except UNREADABLE_PAYLOAD as exc:
                dispositions.append(Disposition("dead", "invalid_payload", str(exc)))
                continue
            products = msgspec.to_builtins(update.products)
            try:
                changed = await self.writer.call(
                    self.ledger.replace_catalogue, update.version, products, "catalog")
            except LedgerError as exc:
                dispositions.append(Disposition("dead", "rejected", str(exc)))
                continue
            log.info("price catalogue", version=update.version, replaced=changed)
            dispositions.append(ACK)
        return dispositions


# ------------------------------------------------------------------ sweeper


class Sweeper:
    """Expires holds past their TTL and grants past their expiry, as events."""

    def __init__(self, ledger: Ledger, writer: Writer, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.ledger = ledger
        self.writer = writer
        self.interval_s = interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry-sweeper")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                swept = await self.writer.call(accounts.sweep_expiries, self.ledger,
                                               priority=Priority.INTAKE)
                if swept:
                    log.info("expiry sweep", accounts=swept)
            except Exception:
                log.exception("expiry sweep failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)


# ------------------------------------------------------------------ wiring


def consumers(nc: NATS, ledger: Ledger, writer: Writer) -> list[DurableConsumer]:
    usage = UsageIntake(ledger, writer)
    payments = PaymentsConsumer(ledger, writer)
    catalogue = CatalogueConsumer(ledger, writer)
    return [
        DurableConsumer(nc, stream="USAGE", subject=USAGE_RECORDED, durable="ledger-usage",
                        handle_batch=usage.handle, batch_size_max=INTAKE_BATCH_SIZE_MAX),
        DurableConsumer(nc, stream="PAYMENTS", subject=PAYMENTS_RECEIVED,
                        durable="ledger-payments-received", handle_batch=payments.handle_received,
                        batch_size_max=100),
        DurableConsumer(nc, stream="PAYMENTS", subject=PAYMENTS_REFUNDED,
                        durable="ledger-payments-refunded", handle_batch=payments.handle_refunded,
                        batch_size_max=100),
        DurableConsumer(nc, stream="CATALOG", subject=CATALOG_PRICES_UPDATED,
                        durable="ledger-catalog", handle_batch=catalogue.handle, batch_size_max=10),
    ]
