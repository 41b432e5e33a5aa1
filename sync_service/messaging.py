"""NATS: invoicing.v1.* and payments.v1.received become sync jobs.

Durable JetStream subscribers; each message is written to the sync queue in one transaction
and acknowledged only after that commit (FastStream acks when the handler returns, and naks
when it raises, so a database outage redelivers). A message that cannot be decoded will not
improve on redelivery: it is set aside on `deadletter.v1.<subject>` (services.consumer's
shape) and acknowledged.

Issued invoices, most of the traffic (a billing run issues thousands at once), are written
by a group commit (`InvoiceIntake`): the handlers of a pulled batch, which FastStream runs
concurrently, each hand their invoice over and wait; one statement writes every invoice
waiting, and each handler returns (its message acked) once that statement has committed. A
failed statement fails every handler in it (each message naked, redelivered, written again:
the intake is idempotent). One statement per batch instead of one per invoice: at the start
of a 20,000-invoice drain the intake ran at 100-200 invoices/s for ten seconds and left
organisations without work (so their leases moved back and forth) while hundreds of lane
workers held the shared pool; the intake now has a pool of its own (docs/sync.md "Speed").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import psycopg
import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import (
    CreditNoteIssued,
    CustomerUpdated,
    InvoiceIssued,
    InvoicePaid,
    InvoiceVoided,
)
from contracts.payments import PaymentReceived
from contracts.subjects import (
    DEADLETTER_PREFIX,
    INVOICING_CREDIT_NOTE_ISSUED,
    INVOICING_CUSTOMER_UPDATED,
    INVOICING_ISSUED,
    INVOICING_PAID,
    INVOICING_VOIDED,
    PAYMENTS_RECEIVED,
)
from services.broker import durable_pull
from services.consumer import dead_letter
from sync_service.app import queue

log = structlog.get_logger(__name__)

INVOICES_DURABLE: Final = "sync-invoicing"
PAYMENTS_DURABLE: Final = "sync-payments"
_PULL_BATCH: Final = 64
_DELIVERIES_MAX: Final = 20
_encoder = msgspec.json.Encoder()

Conn = psycopg.AsyncConnection[Any]
_Intake = Callable[[Conn, Any], Awaitable[bool]]

_INVOICING: Final[dict[str, tuple[type[msgspec.Struct], _Intake]]] = {
    INVOICING_ISSUED: (InvoiceIssued, queue.add_invoice),  # by InvoiceIntake, in batches
    INVOICING_CREDIT_NOTE_ISSUED: (CreditNoteIssued, queue.add_credit_note),
    INVOICING_VOIDED: (InvoiceVoided, queue.add_void),
    INVOICING_PAID: (InvoicePaid, queue.add_paid),  # HubSpot's status; Xero's from payments
    INVOICING_CUSTOMER_UPDATED: (CustomerUpdated, queue.add_customer),
}


class InvoiceIntake:
    """Issued invoices written by group commit: `add` returns once its invoice is committed,
    in one statement with every other invoice that arrived while the previous one ran."""

    def __init__(self, pool: AsyncConnectionPool, *, batch_max: int = 500) -> None:
        # A pool of its own (one statement at a time needs one connection): behind the
        # lanes' pool, the intake waited for a connection while hundreds of workers claimed.
        self._pool = pool
        self._batch_max = batch_max
        self._waiting: list[tuple[InvoiceIssued, asyncio.Future[bool]]] = []
        self._writing = False

    async def add(self, invoice: InvoiceIssued) -> bool:
        """Whether the invoice added a job (False for a repeat); raises if the write failed."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((invoice, done))
        if not self._writing:
            self._writing = True
            try:
                # The other handlers of the pulled batch were started with this one: let
                # them hand their invoices over first, so that one statement takes them all.
                await asyncio.sleep(0)
                # This caller writes for everyone until nothing is waiting: those arriving
                # meanwhile go in the next statement.
                while self._waiting:
                    batch = self._waiting[: self._batch_max]
                    del self._waiting[: self._batch_max]
                    await self._write(batch)
            finally:
                self._writing = False
                # Left by a writer cancelled mid-way (a stop): failed, so redelivered.
                abandoned, self._waiting = self._waiting, []
                _fail(abandoned, RuntimeError("intake stopped"))
        return await done

    async def _write(self, batch: list[tuple[InvoiceIssued, asyncio.Future[bool]]]) -> None:
        try:
            async with queue.single_statements(self._pool) as conn:
                added = await queue.add_invoices(conn, [invoice for invoice, _ in batch])
        except Exception as exc:
            _fail(batch, exc)
            return
        except BaseException:  # the writer cancelled: the batch is redelivered
            _fail(batch, RuntimeError("intake stopped"))
            raise
        for (_, done), was_added in zip(batch, added, strict=True):
            if not done.done():
                done.set_result(was_added)


def _fail(waiting: list[tuple[InvoiceIssued, asyncio.Future[bool]]], exc: Exception) -> None:
    for _, done in waiting:
        if not done.done():
            done.set_exception(exc)


async def _bury(broker: NatsBroker, message: NatsMessage, detail: str, durable: str) -> None:
    raw = message.raw_message
    letter = dead_letter(raw, "invalid_payload", detail, consumer=durable)
    await broker.connection.jetstream().publish(
        DEADLETTER_PREFIX + raw.subject, _encoder.encode(letter),
        headers={"Nats-Msg-Id": letter.dead_letter_id})
    log.warning("sync.message_dead_lettered", subject=raw.subject, detail=detail[:200])


def subscribe(broker: NatsBroker, pool: AsyncConnectionPool, on_queued: Callable[[], None]
              ) -> None:
    """`pool`: the intake's own, never waiting behind the lanes' (`InvoiceIntake`)."""
    invoices = InvoiceIntake(pool)

    async def in_transaction(intake: _Intake, event: Any) -> bool:
        async with pool.connection() as conn, conn.transaction():
            return await intake(conn, event)

    @broker.subscriber(
        "invoicing.v1.>",
        **durable_pull("INVOICING", INVOICES_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="sync:invoicing",
        description="Queues invoices, credit notes, voids and customer details for the accounting"
                    " systems.",
    )
    async def on_invoicing_event(message: NatsMessage) -> None:
        subject = message.raw_message.subject
        found = _INVOICING.get(subject)
        if found is None:
            return  # overdue: not pushed
        kind, intake = found
        if subject == INVOICING_ISSUED:
            await _take(broker, message, kind, invoices.add, INVOICES_DURABLE, on_queued)
        else:
            await _take(broker, message, kind, lambda event: in_transaction(intake, event),
                        INVOICES_DURABLE, on_queued)

    @broker.subscriber(
        PAYMENTS_RECEIVED,
        **durable_pull("PAYMENTS", PAYMENTS_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="sync:payments",
        description="Queues invoice payments for the accounting systems.",
    )
    async def on_payment(message: NatsMessage) -> None:
        await _take(broker, message, PaymentReceived,
                    lambda event: in_transaction(_add_invoice_payment, event),
                    PAYMENTS_DURABLE, on_queued)


async def _add_invoice_payment(conn: Conn, payment: PaymentReceived) -> bool:
    # Top-ups are not invoice payments; a payment read from Xero is already there.
    if payment.purpose != "invoice" or payment.provider == "xero":
        return False
    return await queue.add_payment(conn, payment)


async def _take(broker: NatsBroker, message: NatsMessage, kind: type[msgspec.Struct],
                write: Callable[[Any], Awaitable[bool]], durable: str,
                on_queued: Callable[[], None]) -> None:
    try:
        event = msgspec.json.decode(message.body, type=kind)
    except (msgspec.DecodeError, ValueError) as exc:
        await _bury(broker, message, f"{type(exc).__name__}: {exc}", durable)
        return
    if await write(event):
        on_queued()
