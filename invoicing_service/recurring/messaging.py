"""NATS: a top-up retries the account's past-due renewals (payments.v1.received)."""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
import structlog
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.payments import PaymentReceived
from contracts.subjects import PAYMENTS_RECEIVED
from invoicing_service.recurring.app.renewals import Renewals

log = structlog.get_logger(__name__)

PAYMENTS_DURABLE: Final = "invoicing-recurring-payments"
_PULL_BATCH: Final = 32
_DELIVERIES_MAX: Final = 20
# The ledger credits the same payment from the same message, on its own consumer: a retry
# that comes first is refused again. The retry is repeated after these waits while it is
# refused; later than that, the daily retry (or the next top-up) takes over.
CREDIT_WAITS_S: Final = (0.0, 0.5, 1.0, 2.0, 4.0)


def subscribe_payments(broker: NatsBroker, renewals: Renewals) -> None:
    @broker.subscriber(
        PAYMENTS_RECEIVED,
        stream=JStream("PAYMENTS", declare=False),
        durable=PAYMENTS_DURABLE,
        pull_sub=PullSub(batch_size=_PULL_BATCH, timeout=5.0),
        deliver_policy=DeliverPolicy.NEW,
        config=ConsumerConfig(max_deliver=_DELIVERIES_MAX),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="invoicing:recurring:payments",
        description="Retries the paying account's past-due and suspended renewals.",
    )
    async def on_payment_received(message: NatsMessage) -> None:
        try:
            payment = msgspec.json.decode(message.body, type=PaymentReceived)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("recurring.payment_rejected", error=str(exc))
            return
        await retry_after_payment(renewals, payment)


async def retry_after_payment(renewals: Renewals, payment: PaymentReceived) -> None:
    for wait_s in CREDIT_WAITS_S:
        await asyncio.sleep(wait_s)
        counts = await renewals.retry_account(payment.account_id)
        if not counts.refused:
            return
    log.info("recurring.still_refused_after_payment", account_id=str(payment.account_id),
             payment_id=payment.payment_id)
