"""payments.v1.* as messages in the outbox, written in the transaction that records the fact."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from contracts.payments import PaymentFailed, PaymentReceived, PaymentRefunded
from contracts.subjects import PAYMENTS_FAILED, PAYMENTS_RECEIVED, PAYMENTS_REFUNDED
from payments_service.app.records import Conn, PaymentRow
from payments_service.domain.checkout import minor_to_amount
from payments_service.domain.refunds import RefundSplit
from services.http import current_correlation_id
from services.outbox import enqueue

# The relay LISTENs here; every enqueue NOTIFYs it at commit.
OUTBOX_CHANNEL: Final = "payments_outbox"
_TEXT_MAX: Final = 500


def _headers() -> dict[str, str]:
    # FastStream's name for it: consumers' logs then carry the id of the webhook that caused it.
    correlation_id = current_correlation_id()
    return {"correlation_id": correlation_id} if correlation_id else {}


async def announce_received(conn: Conn, payment: PaymentRow, received_at: datetime) -> None:
    message = PaymentReceived(
        payment_id=payment.payment_id,
        provider=payment.provider,  # type: ignore[arg-type]
        provider_reference=payment.provider_reference,
        account_id=payment.account_id,
        purpose=payment.purpose,
        amount=minor_to_amount(payment.net_minor),
        vat_amount=minor_to_amount(payment.vat_minor),
        currency=payment.currency,  # type: ignore[arg-type]
        invoice_id=payment.invoice_id,
        received_at=received_at,
    )
    await enqueue(conn, PAYMENTS_RECEIVED, message, channel=OUTBOX_CHANNEL, headers=_headers())


async def announce_refunded(
    conn: Conn,
    payment: PaymentRow,
    *,
    refund_id: str,
    split: RefundSplit,
    provider_reference: str,
    reason: str | None,
    refunded_at: datetime,
) -> None:
    message = PaymentRefunded(
        # Never equal to a payment id: JetStream de-duplicates across the whole stream.
        event_id=refund_id,
        refund_id=refund_id,
        payment_id=payment.payment_id,
        provider=payment.provider,  # type: ignore[arg-type]
        provider_reference=provider_reference,
        account_id=payment.account_id,
        purpose=payment.purpose,
        amount=minor_to_amount(split.net_minor),
        vat_amount=minor_to_amount(split.vat_minor),
        currency=payment.currency,  # type: ignore[arg-type]
        invoice_id=payment.invoice_id,
        reason=reason[:_TEXT_MAX] if reason else None,
        refunded_at=refunded_at,
    )
    await enqueue(conn, PAYMENTS_REFUNDED, message, channel=OUTBOX_CHANNEL, headers=_headers())


async def announce_failed(
    conn: Conn, payment: PaymentRow, *, event_id: str, failed_at: datetime
) -> None:
    message = PaymentFailed(
        event_id=event_id,
        payment_id=payment.payment_id,
        provider=payment.provider,  # type: ignore[arg-type]
        provider_reference=payment.provider_reference,
        account_id=payment.account_id,
        purpose=payment.purpose,
        amount=minor_to_amount(payment.net_minor),
        vat_amount=minor_to_amount(payment.vat_minor),
        currency=payment.currency,  # type: ignore[arg-type]
        invoice_id=payment.invoice_id,
        failure_code=(payment.failure_code or None) and payment.failure_code[:128],
        failure_message=(payment.failure_message or None) and payment.failure_message[:_TEXT_MAX],
        failed_at=failed_at,
    )
    await enqueue(conn, PAYMENTS_FAILED, message, channel=OUTBOX_CHANNEL, headers=_headers())
