"""The ledger on NATS: usage intake, authorize, payments and catalogue consumers, the expiry
sweeper, and the publisher of ledger.v1.events.* from the event store's notification log.

Every write goes through ``Writer``, one thread: the domain is synchronous, and one writer per
process means an account is never changed by two threads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contracts.catalog import PricesUpdated
from contracts.ledger import AuthorizeReply, AuthorizeRequest
from contracts.partitioning import partition_of
from contracts.payments import PaymentReceived, PaymentRefunded
from contracts.subjects import (
    CATALOG_PRICES_UPDATED,
    LEDGER_AUTHORIZE,
    LEDGER_AUTHORIZE_BY_ACCOUNT,
    PAYMENTS_RECEIVED,
    PAYMENTS_REFUNDED,
    USAGE_RECORDED,
    USAGE_RECORDED_BY_ACCOUNT,
    authorize_partition_subject,
    usage_partition_filter,
    usage_partition_subject,
    wildcard,
)
from contracts.usage import UsageRecorded
from ledger_service import metrics
from ledger_service.app import accounts, intake
from ledger_service.app.ledger import AccountNotFound, Ledger
from ledger_service.databases import DatabaseGroup
from ledger_service.domain.errors import LedgerError
from services.consumer import (
    ACK,
    ORIGINAL_MSG_ID_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    UNREADABLE_PAYLOAD,
    Disposition,
    DurableConsumer,
    NotNow,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

INTAKE_BATCH_SIZE_MAX = 5_000
AUTHORIZE_BATCH_SIZE_MAX = 512
AUTHORIZE_DRAIN_S = 10.0  # at stop, how long the requests already taken may take
SWEEP_INTERVAL_S = 5.0
AUTHORIZE_QUEUE_GROUP = "ledger-authorize"
FORWARD_PENDING_MAX = 2 * INTAKE_BATCH_SIZE_MAX  # forwarded publishes awaiting their PubAck
FORWARD_TIMEOUT_S = 10.0
FORWARDED_ID_PREFIX = "routed:"


class Ownership(Protocol):
    """Which partitions this process applies (ledger_service.partitions.PartitionOwner)."""

    @property
    def partitions(self) -> int: ...

    def owns(self, partition: int) -> bool: ...

    def owns_all(self) -> bool: ...


class _Routing(msgspec.Struct):
    """All the forwarder reads of a message: its account."""

    account_id: UUID


_routing_decoder = msgspec.json.Decoder(_Routing)
# The hash is pure Python (a few microseconds); accounts repeat, so remember them.
_partition = functools.lru_cache(maxsize=100_000)(partition_of)


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
    """Batches of usage.v1.recorded: decode, apply in one transaction, then ack.

    With `owner` and `nc` it is also the forwarder of usage.v1.recorded and
    usage.v1.recorded.<account_id>: a message of a partition this process owns is applied
    here (no hop: a lone process applies everything as before), any other is republished to
    usage.v1.part.<p>.<account_id> for its owner and acked only once JetStream stored it.
    With `partition`, it reads that partition's subject, and only while it owns it.
    """

    def __init__(self, ledger: Ledger, writer: Writer, owner: Ownership | None = None,
                 nc: NATS | None = None, partition: int | None = None,
                 batcher: IntakeBatcher | None = None) -> None:
        self.ledger = ledger
        self.writer = writer
        self.batcher = batcher
        self.owner = owner
        self.nc = nc
        self.partition = partition
        self._js: Any = None
        self._decoder = msgspec.json.Decoder(UsageRecorded)

    async def handle(self, msgs: Sequence[Msg]) -> list[Disposition]:
        owner = self.owner
        if owner is None:
            return await self.apply(msgs)
        if self.partition is not None:
            if not owner.owns(self.partition):  # handed over or fenced: the owner will read it
                raise NotNow(f"partition {self.partition} is not owned here")
            return await self.apply(msgs)
        if owner.owns_all():  # a lone process: no routing, as before partitions
            return await self.apply(msgs)
        dispositions: list[Disposition | None] = [None] * len(msgs)
        local: list[int] = []
        remote: list[tuple[int, int, UUID]] = []
        for index, msg in enumerate(msgs):
            try:
                account_id = _routing_decoder.decode(msg.data).account_id
            except UNREADABLE_PAYLOAD as exc:
                dispositions[index] = Disposition("dead", "invalid_payload", str(exc))
                continue
            partition = _partition(account_id, owner.partitions)
            if owner.owns(partition):
                local.append(index)
            else:
                remote.append((index, partition, account_id))
        if local:
            applied = await self.apply([msgs[i] for i in local])
            for index, disposition in zip(local, applied, strict=True):
                dispositions[index] = disposition
        if remote:
            await self._forward(msgs, remote)
        return [d or ACK for d in dispositions]

    async def _forward(self, msgs: Sequence[Msg], remote: list[tuple[int, int, UUID]]) -> None:
        """Republish to the partitions' subjects and wait for every PubAck. A failure raises
        (a dependency is away): the batch is redelivered, and what this process applied of it
        comes back as harmless duplicates."""
        if self._js is None:
            assert self.nc is not None
            self._js = self.nc.jetstream(publish_async_max_pending=FORWARD_PENDING_MAX)
        js = self._js
        futures = []
        try:
            for index, partition, account_id in remote:
                futures.append(await js.publish_async(
                    usage_partition_subject(partition, account_id), msgs[index].data,
                    headers=forwarded_headers(msgs[index]), wait_stall=FORWARD_TIMEOUT_S))
            await asyncio.wait_for(asyncio.gather(*futures), FORWARD_TIMEOUT_S)
        except Exception as exc:  # NATS away, the stream full: not the messages' fault
            raise NotNow(f"forwarding failed: {type(exc).__name__}: {exc}") from exc
        finally:
            for future in futures:  # a PubAck that never came must not hold its slot
                if not future.done():
                    future.cancel()

    async def apply(self, msgs: Sequence[Msg]) -> list[Disposition]:
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
            verdicts = await (self.batcher.apply(decoded) if self.batcher is not None else
                              self.writer.call(intake.apply_usage, self.ledger, decoded,
                                               priority=Priority.INTAKE))
            for index, verdict in zip(positions, verdicts, strict=True):
                dispositions[index] = (
                    Disposition("dead", "rejected", verdict.detail)
                    if verdict.outcome == "dead" else ACK
                )
        return [d or ACK for d in dispositions]


class IntakeBatcher:
    """One writer transaction for the batches of several consumers that arrive together.

    A process reads each of its partitions with a consumer of its own; without this, each
    consumer's batch was a transaction of its own, and two processes with 8 partitions each
    made many small commits where one process made a few large ones (docs/scaling.md).
    Batches queued while a transaction runs are applied together in the next one.
    """

    def __init__(self, ledger: Ledger, writer: Writer,
                 messages_max: int = 2 * INTAKE_BATCH_SIZE_MAX) -> None:
        self.ledger = ledger
        self.writer = writer
        self.messages_max = messages_max
        self._pending: list[tuple[list[UsageRecorded], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def apply(self, decoded: list[UsageRecorded]) -> list[intake.UsageVerdict]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((decoded, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="intake-batcher")
        result: list[intake.UsageVerdict] = await future
        return result

    async def _drain(self) -> None:
        while self._pending:
            taken, size = 0, 0
            while taken < len(self._pending) and (
                    taken == 0 or size + len(self._pending[taken][0]) <= self.messages_max):
                size += len(self._pending[taken][0])
                taken += 1
            group, self._pending = self._pending[:taken], self._pending[taken:]
            combined = [message for decoded, _ in group for message in decoded]
            try:
                verdicts = await self.writer.call(intake.apply_usage, self.ledger, combined,
                                                  priority=Priority.INTAKE)
            except Exception as exc:  # each consumer handles it as its own batch's failure
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for decoded, future in group:
                if not future.done():
                    future.set_result(verdicts[start:start + len(decoded)])
                start += len(decoded)


def forwarded_headers(msg: Msg) -> dict[str, str]:
    """The forwarded copy's headers. The copy lands in the same stream (USAGE), whose
    duplicate window is per stream, so it cannot keep the original Nats-Msg-Id (JetStream
    would drop it as a repeat of the original): it gets `routed:<original id>`, so a forward
    retried after a lost PubAck is still dropped. The ledger's idempotency key is the
    payload's event_id, the same in both."""
    headers = dict(msg.headers or {})
    original = headers.get("Nats-Msg-Id")
    if not original:
        meta = msg.metadata
        original = f"{meta.stream}:{meta.sequence.stream}" if meta and meta.sequence else ""
    if original:
        headers["Nats-Msg-Id"] = FORWARDED_ID_PREFIX + original
        headers[ORIGINAL_MSG_ID_HEADER] = original
    headers[ORIGINAL_SUBJECT_HEADER] = msg.subject
    return headers


# ------------------------------------------------------------------ authorize


class Authorizer:
    """ledger.v1.authorize: requests that arrive together commit together (group commit).

    While one batch is being written, the next ones queue; each write is one transaction for
    all of them, so throughput grows with load while a lone request waits for one commit.
    """

    def __init__(self, ledger: Ledger, writer: Writer, owner: Ownership | None = None) -> None:
        self.ledger = ledger
        self.writer = writer
        self.owner = owner
        self._nc: NATS | None = None
        self._partitions: dict[int, Any] = {}
        # (request, the message to answer); the batcher replies itself, so a request costs
        # no task and no future of its own (a fifth of the event loop's time per request).
        self._queue: asyncio.Queue[tuple[AuthorizeRequest, Msg]] = asyncio.Queue()
        self._decoder = msgspec.json.Decoder(AuthorizeRequest)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[Any] = []

    async def start(self, nc: NATS) -> None:
        """Answer ledger.v1.authorize and ledger.v1.authorize.<account_id> (in one queue
        group across the ledger processes): a request for a partition owned here is answered
        here; any other is forwarded to its owner's subject, ledger.v1.authorize.part.<p>,
        with the requester's reply subject, so the owner answers the requester directly."""
        self._nc = nc
        self._task = asyncio.create_task(self._run(), name="authorize-batcher")
        for subject in (LEDGER_AUTHORIZE, wildcard(LEDGER_AUTHORIZE_BY_ACCOUNT)):
            self._subscriptions.append(await nc.subscribe(
                subject, queue=AUTHORIZE_QUEUE_GROUP, cb=self._on_request))

    async def add_partition(self, partition: int) -> None:
        assert self._nc is not None
        if partition not in self._partitions:
            self._partitions[partition] = await self._nc.subscribe(
                authorize_partition_subject(partition), queue=AUTHORIZE_QUEUE_GROUP,
                cb=self._on_owned_request)

    async def remove_partition(self, partition: int) -> None:
        subscription = self._partitions.pop(partition, None)
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.drain()

    async def stop(self) -> None:
        """Take no new request, answer every one taken, then stop."""
        for subscription in [*self._subscriptions, *self._partitions.values()]:
            with contextlib.suppress(Exception):
                await subscription.drain()
        self._subscriptions, self._partitions = [], {}
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
        owner = self.owner
        if owner is not None and not owner.owns_all():
            partition = _partition(request.account_id, owner.partitions)
            if not owner.owns(partition) and self._nc is not None:
                # No owner at this instant (a handover): nobody answers, the requester times
                # out and retries, and its request_id makes that safe.
                await self._nc.publish(authorize_partition_subject(partition), msg.data,
                                       reply=msg.reply, headers=msg.headers)
                return
        self._queue.put_nowait((request, msg))

    async def _on_owned_request(self, msg: Msg) -> None:
        """A request forwarded to a partition of this process: answered here, never again
        forwarded (the event store's concurrency control covers a handover in between)."""
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
    """payments.v1.received credits the account, payments.v1.refunded takes it back; once.

    With several databases (LEDGER_DATABASES) each group reads every payment on a durable of
    its own and applies those of its accounts (`mine`), acknowledging the others: their
    group's durable applies them. Payments are few; no routing hop is worth it."""

    def __init__(self, ledger: Ledger, writer: Writer,
                 mine: Callable[[UUID], bool] | None = None) -> None:
        self.ledger = ledger
        self.writer = writer
        self.mine = mine

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
        if self.mine is not None and not self.mine(message.account_id):
            return ACK  # another database's account: its group applies it
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

    def __init__(self, ledger: Ledger, writer: Writer, interval_s: float = SWEEP_INTERVAL_S,
                 owner: Ownership | None = None) -> None:
        self.ledger = ledger
        self.writer = writer
        self.owner = owner
        self.interval_s = interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry-sweeper")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    @property
    def _owns_account(self) -> Callable[[UUID], bool] | None:
        owner = self.owner
        if owner is None:
            return None
        return lambda account_id: owner.owns(partition_of(account_id, owner.partitions))

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                swept = await self.writer.call(accounts.sweep_expiries, self.ledger,
                                               self._owns_account, priority=Priority.INTAKE)
                if swept:
                    log.info("expiry sweep", accounts=swept)
            except Exception:
                log.exception("expiry sweep failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)


# ------------------------------------------------------------------ wiring


def consumers(nc: NATS, ledger: Ledger, writer: Writer, owner: Ownership | None = None,
              batcher: IntakeBatcher | None = None,
              group: DatabaseGroup | None = None) -> list[DurableConsumer]:
    """The durables every ledger process shares (competing consumers): usage on the subjects
    publishers use (applied here when this process owns the account's partition, forwarded to
    the owner otherwise), payments and the catalogue (applied by whichever process fetched
    them; the event store's concurrency control keeps two processes apart).

    With several databases, payments and the catalogue are read by each `group` on durables
    of its own (`-g<n>`): every database keeps its own catalogue, and a payment is applied by
    its account's group (PaymentsConsumer)."""
    usage = UsageIntake(ledger, writer, owner, nc if owner is not None else None,
                        batcher=batcher)
    payments = PaymentsConsumer(ledger, writer, mine=None if group is None or owner is None
                                else _in_group(group, owner.partitions))
    catalogue = CatalogueConsumer(ledger, writer)
    suffix = "" if group is None else f"-{group.name}"
    by_account = [] if owner is None else [
        DurableConsumer(nc, stream="USAGE", subject=wildcard(USAGE_RECORDED_BY_ACCOUNT),
                        durable=USAGE_BY_ACCOUNT_DURABLE, handle_batch=usage.handle,
                        batch_size_max=INTAKE_BATCH_SIZE_MAX)]
    return [
        DurableConsumer(nc, stream="USAGE", subject=USAGE_RECORDED, durable="ledger-usage",
                        handle_batch=usage.handle, batch_size_max=INTAKE_BATCH_SIZE_MAX),
        *by_account,
        DurableConsumer(nc, stream="PAYMENTS", subject=PAYMENTS_RECEIVED,
                        durable="ledger-payments-received" + suffix, handle_batch=payments.handle_received,
                        batch_size_max=100),
        DurableConsumer(nc, stream="PAYMENTS", subject=PAYMENTS_REFUNDED,
                        durable="ledger-payments-refunded" + suffix, handle_batch=payments.handle_refunded,
                        batch_size_max=100),
        DurableConsumer(nc, stream="CATALOG", subject=CATALOG_PRICES_UPDATED,
                        durable="ledger-catalog" + suffix, handle_batch=catalogue.handle, batch_size_max=10),
    ]


USAGE_BY_ACCOUNT_DURABLE = "ledger-usage-by-account"


def _in_group(group: DatabaseGroup, partitions: int) -> Callable[[UUID], bool]:
    members = frozenset(group.partitions)
    return lambda account_id: _partition(account_id, partitions) in members


def partition_durable(partition: int) -> str:
    return f"ledger-usage-p{partition}"


def partition_consumer(nc: NATS, ledger: Ledger, writer: Writer, owner: Ownership,
                       partition: int, batcher: IntakeBatcher | None = None) -> DurableConsumer:
    """The owner's reader of usage.v1.part.<partition>.*: started when this process takes
    the partition, stopped when it gives it up."""
    intake = UsageIntake(ledger, writer, owner, partition=partition, batcher=batcher)
    return DurableConsumer(nc, stream="USAGE", subject=usage_partition_filter(partition),
                           durable=partition_durable(partition), handle_batch=intake.handle,
                           batch_size_max=INTAKE_BATCH_SIZE_MAX)
