"""NATS: what invoicing consumes (ledger.v1.events.* for accounts and usage,
payments.v1.received for payments and top-up receipts); its own events go out through the
outbox (app/store.py, services/outbox.py).

Durable pull consumers, acked after the handler's commit (AckPolicy.NACK_ON_ERROR: an
exception naks for redelivery). A message that can never apply (malformed, or refused by the
domain: paying a void invoice, an unknown invoice) is published to deadletter.v1.<subject>
and acked, never retried for ever nor half-applied.
"""

from __future__ import annotations

from typing import Final

import msgspec
import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from contracts.deadletter import DeadLetterReason
from contracts.ledger import AccountUpdated, EntryPosted
from contracts.payments import PaymentReceived
from contracts.subjects import (
    DEADLETTER_PREFIX,
    LEDGER_ACCOUNT_UPDATED,
    LEDGER_ENTRY_POSTED,
    PAYMENTS_RECEIVED,
)
from invoicing_service.app.customers import Customers
from invoicing_service.app.payments import PaymentIntake
from invoicing_service.domain import errors
from services.broker import durable_pull
from services.consumer import dead_letter

log = structlog.get_logger(__name__)

LEDGER_DURABLE: Final = "invoicing-ledger"
PAYMENTS_DURABLE: Final = "invoicing-payments"
_PULL_BATCH: Final = 64
_DELIVERIES_MAX: Final = 20
_entry_decoder = msgspec.json.Decoder(EntryPosted)
_account_decoder = msgspec.json.Decoder(AccountUpdated)
_payment_decoder = msgspec.json.Decoder(PaymentReceived)


async def bury(broker: NatsBroker, message: NatsMessage, reason: DeadLetterReason,
               detail: str, consumer: str) -> None:
    """Publish the dead letter and wait for JetStream to store it; the caller then acks."""
    raw = message.raw_message
    letter = dead_letter(raw, reason, detail, consumer=consumer)
    await broker.connection.jetstream().publish(
        DEADLETTER_PREFIX + raw.subject, msgspec.json.encode(letter),
        headers={"Nats-Msg-Id": letter.dead_letter_id})
    log.warning("invoicing.dead_lettered", subject=raw.subject, reason=reason,
                detail=detail[:200], consumer=consumer)


def subscribe_ledger(broker: NatsBroker, customers: Customers) -> None:
    @broker.subscriber(
        "ledger.v1.events.>",
        **durable_pull("LEDGER", LEDGER_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="invoicing:ledger",
        description="Keeps accounts (account_updated) and rated usage (entry_posted, usage).",
    )
    async def on_ledger_event(message: NatsMessage) -> None:
        subject = message.raw_message.subject
        try:
            if subject == LEDGER_ENTRY_POSTED:
                await customers.apply_entry(_entry_decoder.decode(message.body))
            elif subject == LEDGER_ACCOUNT_UPDATED:
                await customers.apply_account(_account_decoder.decode(message.body))
        except msgspec.ValidationError as exc:
            await bury(broker, message, "invalid_payload", str(exc), LEDGER_DURABLE)
        except msgspec.DecodeError as exc:
            await bury(broker, message, "invalid_payload", str(exc), LEDGER_DURABLE)


def subscribe_payments(broker: NatsBroker, intake: PaymentIntake) -> None:
    @broker.subscriber(
        PAYMENTS_RECEIVED,
        **durable_pull("PAYMENTS", PAYMENTS_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="invoicing:payments",
        description="Pays invoices (purpose invoice); issues paid receipts (purpose topup).",
    )
    async def on_payment(message: NatsMessage) -> None:
        try:
            payment = _payment_decoder.decode(message.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await bury(broker, message, "invalid_payload", str(exc), PAYMENTS_DURABLE)
            return
        try:
            outcome = await intake.apply(payment)
        except (errors.InvoiceNotFound, errors.InvoiceNotPayable, errors.InvalidRequest) as exc:
            await bury(broker, message, "rejected", f"{type(exc).__name__}: {exc}",
                       PAYMENTS_DURABLE)
            return
        log.info("invoicing.payment_applied", payment_id=payment.payment_id, outcome=outcome)
