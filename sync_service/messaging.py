"""NATS: invoicing.v1.* and payments.v1.received become sync jobs.

Durable JetStream subscribers; each message is written to the sync queue in one transaction
and acknowledged only after that commit (FastStream acks when the handler returns, and naks
when it raises, so a database outage redelivers). A message that cannot be decoded will not
improve on redelivery: it is set aside on `deadletter.v1.<subject>` (services.consumer's
shape) and acknowledged.
"""

from __future__ import annotations

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

# Intakes that are one statement (atomic by itself) run in autocommit: one round trip
# instead of three with psycopg's BEGIN and COMMIT (an issued invoice is most of the traffic).
_ONE_STATEMENT: Final[frozenset[_Intake]] = frozenset({queue.add_invoice})

_INVOICING: Final[dict[str, tuple[type[msgspec.Struct], _Intake]]] = {
    INVOICING_ISSUED: (InvoiceIssued, queue.add_invoice),
    INVOICING_CREDIT_NOTE_ISSUED: (CreditNoteIssued, queue.add_credit_note),
    INVOICING_VOIDED: (InvoiceVoided, queue.add_void),
    INVOICING_PAID: (InvoicePaid, queue.add_paid),  # HubSpot's status; Xero's from payments
    INVOICING_CUSTOMER_UPDATED: (CustomerUpdated, queue.add_customer),
}


async def _bury(broker: NatsBroker, message: NatsMessage, detail: str, durable: str) -> None:
    raw = message.raw_message
    letter = dead_letter(raw, "invalid_payload", detail, consumer=durable)
    await broker.connection.jetstream().publish(
        DEADLETTER_PREFIX + raw.subject, _encoder.encode(letter),
        headers={"Nats-Msg-Id": letter.dead_letter_id})
    log.warning("sync.message_dead_lettered", subject=raw.subject, detail=detail[:200])


def subscribe(broker: NatsBroker, pool: AsyncConnectionPool, on_queued: Callable[[], None]
              ) -> None:
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
        await _take(broker, pool, message, kind, intake, INVOICES_DURABLE, on_queued)

    @broker.subscriber(
        PAYMENTS_RECEIVED,
        **durable_pull("PAYMENTS", PAYMENTS_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="sync:payments",
        description="Queues invoice payments for the accounting systems.",
    )
    async def on_payment(message: NatsMessage) -> None:
        await _take(broker, pool, message, PaymentReceived, _add_invoice_payment,
                    PAYMENTS_DURABLE, on_queued)


async def _add_invoice_payment(conn: Conn, payment: PaymentReceived) -> bool:
    # Top-ups are not invoice payments; a payment read from Xero is already there.
    if payment.purpose != "invoice" or payment.provider == "xero":
        return False
    return await queue.add_payment(conn, payment)


async def _take(broker: NatsBroker, pool: AsyncConnectionPool, message: NatsMessage,
                kind: type[msgspec.Struct], intake: _Intake, durable: str,
                on_queued: Callable[[], None]) -> None:
    try:
        event = msgspec.json.decode(message.body, type=kind)
    except (msgspec.DecodeError, ValueError) as exc:
        await _bury(broker, message, f"{type(exc).__name__}: {exc}", durable)
        return
    if intake in _ONE_STATEMENT:
        async with queue.single_statements(pool) as conn:
            added = await intake(conn, event)
    else:
        async with pool.connection() as conn, conn.transaction():
            added = await intake(conn, event)
    if added:
        on_queued()
