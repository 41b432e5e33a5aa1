"""Stripe webhook deliveries: verify, de-duplicate, apply, announce, in one transaction.

Stripe delivers at least once, retries for days, and does not keep order. So: the event id
is inserted first and a repeat stops there; everything an event changes is keyed by the
provider object it is about (a session pays once, a PaymentIntent's refunds grow a
cumulative total), so an event that arrives late or early lands in the same state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from psycopg_pool import AsyncConnectionPool

from payments_service.app import records
from payments_service.app.announce import announce_failed, announce_received, announce_refunded
from payments_service.app.records import Conn, NewPayment, PaymentRow
from payments_service.domain.checkout import CheckoutRecord, session_mismatches
from payments_service.domain.provider_events import (
    Charge,
    CheckoutSession,
    PaymentIntent,
    Refund,
    StripeEvent,
    decode_stripe_event,
    decode_stripe_object,
)
from payments_service.domain.refunds import next_refund, refunded_total
from payments_service.domain.signatures import verify_stripe_signature

log = structlog.get_logger(__name__)

Handler = Callable[[Conn, StripeEvent], Awaitable[str]]
# What the account gets when a card is declined is nothing; the message says why, briefly.
_FAILURE_TEXT_MAX: Final = 500


@dataclass(frozen=True, slots=True)
class WebhookResult:
    event_id: str
    event_type: str
    outcome: str


class StripeWebhooks:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        secrets: Iterable[str],
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._secrets = tuple(secrets)
        self._on_commit = on_commit
        self._clock = clock
        self._handlers: dict[str, Handler] = {
            "checkout.session.completed": self._session_completed,
            "checkout.session.async_payment_succeeded": self._session_completed,
            "checkout.session.async_payment_failed": self._session_payment_failed,
            "checkout.session.expired": self._session_expired,
            "charge.refunded": self._charge_refunded,
            "refund.created": self._refund_changed,
            "refund.updated": self._refund_changed,
            "refund.failed": self._refund_changed,
            "charge.refund.updated": self._refund_changed,
            "payment_intent.payment_failed": self._payment_intent_failed,
        }

    async def receive(self, body: bytes, signature_header: str | None) -> WebhookResult:
        """Verify before anything else: a forged delivery writes nothing at all."""
        verify_stripe_signature(body, signature_header, self._secrets, now_s=self._clock())
        event = decode_stripe_event(body)
        async with self._pool.connection() as conn, conn.transaction():
            fresh = await records.insert_provider_event(
                conn, "stripe", event.id, event.type, body.decode("utf-8")
            )
            if not fresh:
                outcome = "duplicate"
            else:
                handler = self._handlers.get(event.type, self._unhandled)
                outcome = await handler(conn, event)
                await records.set_event_outcome(conn, "stripe", event.id, outcome)
        self._on_commit()
        log.info("stripe.event", event_id=event.id, event_type=event.type, outcome=outcome)
        return WebhookResult(event_id=event.id, event_type=event.type, outcome=outcome)

    async def _unhandled(self, _conn: Conn, _event: StripeEvent) -> str:
        return "ignored_event_type"

    # -- checkout sessions -------------------------------------------------------------------

    async def _matched_checkout(
        self, conn: Conn, event: StripeEvent, session: CheckoutSession
    ) -> CheckoutRecord | None:
        """Our checkout for this session, or None after recording why it is not credited."""
        checkout = await records.checkout_for_session(conn, session.id, session.client_reference_id)
        claimed = session.metadata.get("account_id")
        if checkout is None:
            await records.record_security_event(
                conn, provider="stripe", event_id=event.id, kind="unknown_checkout_session",
                claimed_account=claimed,
                detail={"session_id": session.id, "amount_total": session.amount_total,
                        "currency": session.currency},
            )
            return None
        problems = session_mismatches(checkout, session)
        if problems:
            await records.record_security_event(
                conn, provider="stripe", event_id=event.id, kind="checkout_session_mismatch",
                claimed_account=claimed,
                detail={"session_id": session.id, "checkout_id": checkout.checkout_id,
                        "account_id": str(checkout.account_id), "problems": problems},
            )
            return None
        return checkout

    async def _session_completed(self, conn: Conn, event: StripeEvent) -> str:
        session = decode_stripe_object(event, CheckoutSession)
        checkout = await self._matched_checkout(conn, event, session)
        if checkout is None:
            return "security_event"
        intent = session.payment_intent_id
        if intent:
            await records.lock_payment_intent(conn, intent)
        existing = await records.payment_for_reference(conn, "stripe", session.id)
        occurred_at = _event_time(event)
        if session.payment_status != "paid":
            # A delayed method (bank debit): completed now, paid later by
            # async_payment_succeeded. Recorded as pending so the portal can show it.
            if existing is None and event.type == "checkout.session.completed":
                await records.insert_payment(conn, _session_payment(
                    checkout, session, event, status="pending", received_at=None))
                return "awaiting_payment"
            return "ignored_unpaid"
        if existing is not None and existing.status != "pending":
            return "already_received"
        if existing is None:
            payment = await records.insert_payment(conn, _session_payment(
                checkout, session, event, status="succeeded", received_at=occurred_at))
            if payment is None:  # only possible if the unique index raced us; it cannot here
                return "already_received"
        else:
            payment = await records.mark_payment(
                conn, existing.payment_id, status="succeeded", received_at=occurred_at)
        await records.complete_checkout(conn, checkout.checkout_id, session.id)
        if payment.invoice_id is not None:
            await records.mark_invoice_paid(conn, payment.invoice_id)
        await announce_received(conn, payment, occurred_at)
        if intent:
            # Refunds that arrived before this payment were parked; they apply now.
            await self._apply_refunds(conn, intent, event, provider_reference=None)
        return "payment_received"

    async def _session_payment_failed(self, conn: Conn, event: StripeEvent) -> str:
        session = decode_stripe_object(event, CheckoutSession)
        checkout = await self._matched_checkout(conn, event, session)
        if checkout is None:
            return "security_event"
        if session.payment_intent_id:
            await records.lock_payment_intent(conn, session.payment_intent_id)
        existing = await records.payment_for_reference(conn, "stripe", session.id)
        message = "the delayed payment method failed"
        if existing is None:
            payment = await records.insert_payment(conn, _session_payment(
                checkout, session, event, status="failed", received_at=None,
                failure_code="async_payment_failed", failure_message=message))
            if payment is None:
                return "already_recorded"
        elif existing.status == "pending":
            payment = await records.mark_payment(
                conn, existing.payment_id, status="failed",
                failure_code="async_payment_failed", failure_message=message)
        else:
            return "already_recorded"
        await announce_failed(conn, payment, event_id=f"stripe-{event.id}",
                              failed_at=_event_time(event))
        return "payment_failed"

    async def _session_expired(self, conn: Conn, event: StripeEvent) -> str:
        session = decode_stripe_object(event, CheckoutSession)
        await conn.execute(
            "UPDATE checkouts SET status = 'expired'"
            " WHERE stripe_session_id = %s AND status IN ('creating', 'open')",
            (session.id,),
        )
        return "checkout_expired"

    # -- failed payment attempts ---------------------------------------------------------------

    async def _payment_intent_failed(self, conn: Conn, event: StripeEvent) -> str:
        intent = decode_stripe_object(event, PaymentIntent)
        checkout_id = intent.metadata.get("checkout_id")
        checkout = await records.checkout_by_id(conn, checkout_id) if checkout_id else None
        if checkout is None:
            # Not from one of our checkouts (or not attributable): kept as the event only.
            return "unmatched_payment_failure"
        problems = _intent_mismatches(checkout, intent)
        if problems:
            await records.record_security_event(
                conn, provider="stripe", event_id=event.id, kind="payment_intent_mismatch",
                claimed_account=intent.metadata.get("account_id"),
                detail={"payment_intent": intent.id, "checkout_id": checkout.checkout_id,
                        "problems": problems},
            )
            return "security_event"
        error = intent.last_payment_error
        payment = await records.insert_payment(conn, _checkout_payment(
            checkout, event,
            payment_id=records.payment_id_for("stripe", "payment_attempt", event.id),
            source="payment_attempt", provider_reference=intent.id,
            stripe_payment_intent=intent.id, status="failed", received_at=None,
            failure_code=(error.decline_code or error.code) if error else None,
            failure_message=(error.message or "")[:_FAILURE_TEXT_MAX] if error else None,
        ))
        if payment is None:
            return "already_recorded"
        await announce_failed(conn, payment, event_id=f"stripe-{event.id}",
                              failed_at=_event_time(event))
        return "payment_failed"

    # -- refunds -------------------------------------------------------------------------------

    async def _charge_refunded(self, conn: Conn, event: StripeEvent) -> str:
        charge = decode_stripe_object(event, Charge)
        intent = charge.payment_intent_id
        if intent is None:
            return "unmatched_refund"
        await records.lock_payment_intent(conn, intent)
        await conn.execute(
            "INSERT INTO stripe_refund_totals"
            " (payment_intent, charge_id, amount_refunded_minor, currency)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (payment_intent) DO UPDATE SET amount_refunded_minor ="
            " greatest(stripe_refund_totals.amount_refunded_minor,"
            " excluded.amount_refunded_minor), updated_at = now()",
            (intent, charge.id, charge.amount_refunded, charge.currency.upper()),
        )
        return await self._apply_refunds(conn, intent, event, provider_reference=charge.id)

    async def _refund_changed(self, conn: Conn, event: StripeEvent) -> str:
        refund = decode_stripe_object(event, Refund)
        intent = refund.payment_intent_id
        if intent is None:
            return "unmatched_refund"
        await records.lock_payment_intent(conn, intent)
        # A late, older event about the same refund never overwrites a newer status.
        await conn.execute(
            "INSERT INTO stripe_refund_objects (refund_object_id, payment_intent, charge_id,"
            " amount_minor, currency, status, reason, event_created)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (refund_object_id) DO UPDATE SET status = excluded.status,"
            " amount_minor = excluded.amount_minor, reason = excluded.reason,"
            " event_created = excluded.event_created, updated_at = now()"
            " WHERE stripe_refund_objects.event_created <= excluded.event_created",
            (refund.id, intent, refund.charge_id, refund.amount, refund.currency.upper(),
             refund.status, refund.reason, event.created),
        )
        if not refund.counts:
            await self._flag_reversed_refund(conn, intent, refund, event)
        return await self._apply_refunds(conn, intent, event, provider_reference=refund.id)

    async def _flag_reversed_refund(
        self, conn: Conn, intent: str, refund: Refund, event: StripeEvent
    ) -> None:
        """A refund failed after we may have passed it on: the money came back to us, but no
        payments.v1 message can say so. An operator adjusts the ledger by hand."""
        payment = await records.received_payment_for_intent(conn, intent)
        if payment is not None and payment.refunded_total_minor > 0:
            await records.record_security_event(
                conn, provider="stripe", event_id=event.id, kind="refund_reversed",
                claimed_account=str(payment.account_id),
                detail={"refund": refund.id, "status": refund.status, "amount": refund.amount,
                        "payment_id": payment.payment_id},
            )

    async def _apply_refunds(
        self, conn: Conn, intent: str, event: StripeEvent, *, provider_reference: str | None
    ) -> str:
        """Bring the payment's refunded total up to what Stripe has told us, announcing the
        difference; with no payment yet, what Stripe told us waits for it."""
        payment = await records.received_payment_for_intent(conn, intent)
        if payment is None:
            return "refund_parked"
        cursor = await conn.execute(
            "SELECT coalesce((SELECT amount_refunded_minor FROM stripe_refund_totals"
            "                 WHERE payment_intent = %(pi)s), 0),"
            "       coalesce((SELECT sum(amount_minor) FROM stripe_refund_objects"
            "                 WHERE payment_intent = %(pi)s"
            "                   AND coalesce(status, '') NOT IN ('failed', 'canceled')), 0),"
            "       (SELECT charge_id FROM stripe_refund_totals WHERE payment_intent = %(pi)s),"
            "       (SELECT reason FROM stripe_refund_objects WHERE payment_intent = %(pi)s"
            "          AND reason IS NOT NULL ORDER BY event_created DESC LIMIT 1)",
            {"pi": intent},
        )
        row = await cursor.fetchone()
        assert row is not None
        cumulative_minor, objects_minor, charge_id, reason = row
        split = next_refund(
            already_refunded_minor=payment.refunded_total_minor,
            new_total_minor=refunded_total(int(cumulative_minor), int(objects_minor),
                                           payment.total_minor),
            total_minor=payment.total_minor,
            vat_minor=payment.vat_minor,
        )
        if split is None:
            return "refund_already_recorded"
        refund_id = f"{payment.payment_id}-refund-{split.refunded_total_minor}"
        reference = provider_reference or charge_id or intent
        await conn.execute(
            "INSERT INTO refunds (refund_id, payment_id, provider, provider_reference,"
            " account_id, currency, gross_minor, net_minor, vat_minor, refunded_total_minor,"
            " reason, provider_event_id) VALUES (%s, %s, 'stripe', %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s)",
            (refund_id, payment.payment_id, reference, payment.account_id, payment.currency,
             split.gross_minor, split.net_minor, split.vat_minor, split.refunded_total_minor,
             reason, event.id),
        )
        status = ("refunded" if split.refunded_total_minor == payment.total_minor
                  else "partially_refunded")
        await conn.execute(
            "UPDATE payments SET refunded_total_minor = %s,"
            " refunded_net_minor = refunded_net_minor + %s,"
            " refunded_vat_minor = refunded_vat_minor + %s, status = %s, updated_at = now()"
            " WHERE payment_id = %s",
            (split.refunded_total_minor, split.net_minor, split.vat_minor, status,
             payment.payment_id),
        )
        await announce_refunded(conn, payment, refund_id=refund_id, split=split,
                                provider_reference=reference, reason=reason,
                                refunded_at=_event_time(event))
        return "refund_recorded"


def _session_payment(
    checkout: CheckoutRecord,
    session: CheckoutSession,
    event: StripeEvent,
    *,
    status: str,
    received_at: datetime | None,
    failure_code: str | None = None,
    failure_message: str | None = None,
) -> NewPayment:
    return _checkout_payment(
        checkout, event,
        payment_id=records.payment_id_for("stripe", "checkout_session", session.id),
        source="checkout_session", provider_reference=session.id,
        stripe_payment_intent=session.payment_intent_id, status=status,
        received_at=received_at, failure_code=failure_code, failure_message=failure_message,
    )


def _checkout_payment(
    checkout: CheckoutRecord,
    event: StripeEvent,
    *,
    payment_id: str,
    source: str,
    provider_reference: str,
    stripe_payment_intent: str | None,
    status: str,
    received_at: datetime | None,
    failure_code: str | None,
    failure_message: str | None,
) -> NewPayment:
    """A payment of one of our checkouts. Amounts, currency and account come from the
    checkout we created, never from what Stripe's object claims."""
    return NewPayment(
        payment_id=payment_id,
        source=source,  # type: ignore[arg-type]
        provider="stripe",
        provider_reference=provider_reference,
        account_id=checkout.account_id,
        purpose=checkout.purpose,
        invoice_id=checkout.invoice_id,
        currency=checkout.currency,
        net_minor=checkout.net_minor,
        vat_minor=checkout.vat_minor,
        status=status,  # type: ignore[arg-type]
        provider_event_id=event.id,
        received_at=received_at,
        stripe_payment_intent=stripe_payment_intent,
        checkout_id=checkout.checkout_id,
        failure_code=failure_code,
        failure_message=failure_message,
    )


def _intent_mismatches(checkout: CheckoutRecord, intent: PaymentIntent) -> list[str]:
    problems = []
    if intent.amount != checkout.total_minor:
        problems.append(f"amount {intent.amount} != {checkout.total_minor}")
    if intent.currency.upper() != checkout.currency:
        problems.append(f"currency {intent.currency!r} != {checkout.currency.lower()!r}")
    if intent.metadata.get("account_id") != str(checkout.account_id):
        problems.append("metadata.account_id is not the checkout's account")
    return problems


def _event_time(event: StripeEvent) -> datetime:
    return datetime.fromtimestamp(event.created, tz=UTC)


__all__ = ["PaymentRow", "StripeWebhooks", "WebhookResult"]
