"""The payments schema as the use cases need it: each function runs inside the caller's
transaction, so a webhook's de-duplication, state change and outbox rows commit together."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, Literal

import structlog
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from payments_service.domain.checkout import CheckoutRecord

log = structlog.get_logger(__name__)

Provider = Literal["stripe", "hubspot"]
PaymentSource = Literal["checkout_session", "payment_attempt", "hubspot_invoice"]

# Payment ids are derived from what they stand for, so that the same provider object can
# never be given two ids, even by two racing transactions.
_PAYMENT_ID_NAMESPACE: Final = uuid.UUID("4f3c1f0e-6a0b-5d2e-9b7c-2f1e0d9c8b7a")


def payment_id_for(provider: str, source: str, reference: str) -> str:
    return "pay-" + uuid.uuid5(_PAYMENT_ID_NAMESPACE, f"{provider}:{source}:{reference}").hex


Conn = AsyncConnection[Any]


async def insert_provider_event(
    conn: Conn, provider: Provider, event_id: str, event_type: str, payload: str
) -> bool:
    """True the first time an event id is seen. A concurrent duplicate waits here for the
    first delivery's transaction, then finds the row and is told it is a duplicate."""
    cursor = await conn.execute(
        "INSERT INTO provider_events (provider, event_id, event_type, payload)"
        " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
        (provider, event_id, event_type[:255], payload),
    )
    return cursor.rowcount == 1


async def set_event_outcome(conn: Conn, provider: Provider, event_id: str, outcome: str) -> None:
    await conn.execute(
        "UPDATE provider_events SET outcome = %s WHERE provider = %s AND event_id = %s",
        (outcome, provider, event_id),
    )


async def record_security_event(
    conn: Conn,
    *,
    provider: Provider,
    event_id: str,
    kind: str,
    claimed_account: str | None,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO security_events (provider, provider_event_id, kind, claimed_account, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        (provider, event_id, kind, (claimed_account or None) and claimed_account[:128],
         Jsonb(detail)),
    )
    log.warning("payments.security_event", provider=provider, event_id=event_id, kind=kind,
                claimed_account=claimed_account, detail=detail)


async def lock_payment_intent(conn: Conn, payment_intent: str) -> None:
    """Serialise every event about one PaymentIntent: a refund racing its payment must see
    the payment (or be seen by it), never neither."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"stripe-pi:{payment_intent}",)
    )


_CHECKOUT_COLUMNS: Final = (
    "checkout_id, account_id, purpose, invoice_id, net_minor, vat_minor, currency, description,"
    " stripe_session_id"
)


def _checkout(row: dict[str, Any]) -> CheckoutRecord:
    return CheckoutRecord(**row)


async def checkout_for_session(
    conn: Conn, session_id: str, client_reference_id: str | None
) -> CheckoutRecord | None:
    """The checkout we created for this session. Before its session id was recorded (a crash
    between Stripe's answer and our update) it is found by the reference we gave Stripe."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {_CHECKOUT_COLUMNS} FROM checkouts WHERE stripe_session_id = %s FOR UPDATE",  # noqa: S608 (constant column lists; values are parameters)
            (session_id,),
        )
        row = await cursor.fetchone()
        if row is None and client_reference_id:
            await cursor.execute(
                f"SELECT {_CHECKOUT_COLUMNS} FROM checkouts"  # noqa: S608 (constant column lists; values are parameters)
                " WHERE checkout_id = %s AND stripe_session_id IS NULL FOR UPDATE",
                (client_reference_id,),
            )
            row = await cursor.fetchone()
    return _checkout(row) if row else None


async def checkout_by_id(conn: Conn, checkout_id: str) -> CheckoutRecord | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"SELECT {_CHECKOUT_COLUMNS} FROM checkouts WHERE checkout_id = %s", (checkout_id,)  # noqa: S608 (constant column lists; values are parameters)
        )
        row = await cursor.fetchone()
    return _checkout(row) if row else None


async def complete_checkout(conn: Conn, checkout_id: str, session_id: str) -> None:
    await conn.execute(
        "UPDATE checkouts SET status = 'completed', stripe_session_id = %s WHERE checkout_id = %s",
        (session_id, checkout_id),
    )


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: str
    source: str
    provider: str
    provider_reference: str
    stripe_payment_intent: str | None
    checkout_id: str | None
    account_id: uuid.UUID
    purpose: Literal["topup", "invoice"]
    invoice_id: str | None
    currency: str
    net_minor: int
    vat_minor: int
    refunded_total_minor: int
    refunded_net_minor: int
    refunded_vat_minor: int
    status: str
    failure_code: str | None
    failure_message: str | None
    created_at: datetime
    received_at: datetime | None

    @property
    def total_minor(self) -> int:
        return self.net_minor + self.vat_minor


PAYMENT_COLUMNS: Final = ", ".join(f.name for f in fields(PaymentRow))


async def _one_payment(conn: Conn, where: str, params: tuple[Any, ...]) -> PaymentRow | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE {where}", params)  # noqa: S608 (constant column lists; values are parameters)
        row = await cursor.fetchone()
    return PaymentRow(**row) if row else None


async def payment_for_reference(
    conn: Conn, provider: Provider, reference: str
) -> PaymentRow | None:
    return await _one_payment(
        conn,
        "provider = %s AND provider_reference = %s AND source <> 'payment_attempt' FOR UPDATE",
        (provider, reference),
    )


async def received_payment_for_intent(conn: Conn, payment_intent: str) -> PaymentRow | None:
    return await _one_payment(
        conn,
        "stripe_payment_intent = %s AND source = 'checkout_session'"
        " AND status IN ('succeeded', 'partially_refunded', 'refunded') FOR UPDATE",
        (payment_intent,),
    )


@dataclass(frozen=True, slots=True)
class NewPayment:
    payment_id: str
    source: PaymentSource
    provider: Provider
    provider_reference: str
    account_id: uuid.UUID
    purpose: Literal["topup", "invoice"]
    invoice_id: str | None
    currency: str
    net_minor: int
    vat_minor: int
    status: Literal["pending", "succeeded", "failed"]
    provider_event_id: str
    received_at: datetime | None
    stripe_payment_intent: str | None = None
    checkout_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None


async def insert_payment(conn: Conn, payment: NewPayment) -> PaymentRow | None:
    """The new row, or None when this provider object already has one."""
    names = [f.name for f in fields(NewPayment)]
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f"INSERT INTO payments ({', '.join(names)})"  # noqa: S608 (constant column lists; values are parameters)
            f" VALUES ({', '.join(['%s'] * len(names))})"
            f" ON CONFLICT DO NOTHING RETURNING {PAYMENT_COLUMNS}",
            tuple(getattr(payment, name) for name in names),
        )
        row = await cursor.fetchone()
    return PaymentRow(**row) if row else None


async def mark_payment(
    conn: Conn,
    payment_id: str,
    *,
    status: str,
    received_at: datetime | None = None,
    failure_code: str | None = None,
    failure_message: str | None = None,
) -> PaymentRow:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "UPDATE payments SET status = %s, received_at = coalesce(%s, received_at),"  # noqa: S608 (constant column lists; values are parameters)
            " failure_code = coalesce(%s, failure_code),"
            " failure_message = coalesce(%s, failure_message), updated_at = now()"
            f" WHERE payment_id = %s RETURNING {PAYMENT_COLUMNS}",
            (status, received_at, failure_code, failure_message, payment_id),
        )
        row = await cursor.fetchone()
    assert row is not None, payment_id
    return PaymentRow(**row)


async def mark_invoice_paid(conn: Conn, invoice_id: str) -> None:
    await conn.execute(
        "UPDATE invoices SET status = 'paid', updated_at = now()"
        " WHERE invoice_id = %s AND status = 'open'",
        (invoice_id,),
    )
