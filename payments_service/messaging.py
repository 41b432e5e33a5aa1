"""NATS: the invoicing events this service keeps (to collect invoices), and the outbox relay
that publishes payments.v1.*."""

from __future__ import annotations

from typing import Final

import msgspec
import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from contracts.invoicing import CreditNoteIssued, InvoiceIssued, InvoicePaid, InvoiceVoided
from contracts.subjects import (
    INVOICING_CREDIT_NOTE_ISSUED,
    INVOICING_ISSUED,
    INVOICING_PAID,
    INVOICING_VOIDED,
)
from payments_service.app.invoices import InvoiceBook, InvoiceEvent
from services.broker import durable_pull
from services.consumer import UNREADABLE_PAYLOAD

log = structlog.get_logger(__name__)

INVOICES_DURABLE: Final = "payments-invoices"
# A batch per pull amortises the round trip; each message is still committed on its own.
_PULL_BATCH: Final = 32
# A message failing this often is a bug or poison; JetStream stops redelivering it and the
# consumer's advisory says so, instead of one message blocking for ever.
_DELIVERIES_MAX: Final = 20

_KINDS: Final[dict[str, type[InvoiceEvent]]] = {
    INVOICING_ISSUED: InvoiceIssued,
    INVOICING_PAID: InvoicePaid,
    INVOICING_VOIDED: InvoiceVoided,
    INVOICING_CREDIT_NOTE_ISSUED: CreditNoteIssued,
}


def subscribe_invoices(broker: NatsBroker, book: InvoiceBook) -> None:
    @broker.subscriber(
        "invoicing.v1.>",
        **durable_pull("INVOICING", INVOICES_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="payments:invoices",
        description="Keeps the invoices an invoice checkout or a HubSpot payment may settle.",
    )
    async def on_invoicing_event(message: NatsMessage) -> None:
        subject = message.raw_message.subject
        kind = _KINDS.get(subject)
        if kind is None:
            return  # overdue and future subjects: nothing to keep
        try:
            event = msgspec.json.decode(message.body, type=kind)
        except UNREADABLE_PAYLOAD as exc:
            # A malformed message will not improve on redelivery; acked and logged.
            log.error("payments.invoice_event_rejected", subject=subject, error=str(exc))
            return
        await book.apply(event)
