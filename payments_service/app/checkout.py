"""Checkout sessions: quote, record, create at Stripe, record the session, then redirect.

The checkout row is written before Stripe is called and its session id after, both before
the URL is returned: a session Stripe reports as completed is credited only if it matches a
row written here. The row's id is the Stripe Idempotency-Key, so every retry of the same
checkout (ours after a timeout, or the caller's with the same Idempotency-Key header) gets
the same session back.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.money import to_micros
from payments_service.app.records import Conn
from payments_service.app.stripe_api import SessionLinks, StripeClient, checkout_session_params
from payments_service.domain.checkout import (
    CheckoutRecord,
    InvoiceBalance,
    Quote,
    TaxProfile,
    quote_invoice,
    quote_topup,
    vat_rate_for,
)
from payments_service.domain.errors import (
    AccountNotVisible,
    IdempotencyKeyReused,
    InvoiceNotFound,
    InvoiceNotPayable,
    ProviderRejected,
    TaxProfileForbidden,
)
from services.http import Principal

DEFAULT_CURRENCY: Final = "GBP"


@dataclass(frozen=True, slots=True)
class AccountProfile:
    currency: str
    tax: TaxProfile


DEFAULT_PROFILE: Final = AccountProfile(currency=DEFAULT_CURRENCY, tax=TaxProfile())


@dataclass(frozen=True, slots=True)
class TopUpOrder:
    account_id: UUID
    amount: str
    currency: str | None = None
    tax: TaxProfile | None = None


@dataclass(frozen=True, slots=True)
class OpenedCheckout:
    session_id: str
    checkout_url: str
    net_minor: int
    vat_minor: int
    currency: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class TopUpLimits:
    min_micros: int
    max_micros: int


class Checkouts:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        stripe: StripeClient,
        *,
        links: SessionLinks,
        limits: TopUpLimits,
    ) -> None:
        self._pool = pool
        self._stripe = stripe
        self._links = links
        self._limits = limits

    async def open_topup(
        self, principal: Principal, order: TopUpOrder, idempotency_key: str | None
    ) -> OpenedCheckout:
        if not principal.may_read_account(order.account_id):
            raise AccountNotVisible(f"account {order.account_id} not found")
        profile = await self.profile(order.account_id) or DEFAULT_PROFILE
        currency, tax = _terms(principal, profile, order)
        quote = quote_topup(to_micros(order.amount), currency, tax,
                            min_micros=self._limits.min_micros,
                            max_micros=self._limits.max_micros)
        fingerprint = _fingerprint("topup", str(order.account_id), quote, tax)
        return await self._open(
            principal, idempotency_key, fingerprint, quote,
            account_id=order.account_id, purpose="topup", invoice_id=None,
            description=f"Account credit ({currency})",
        )

    async def open_invoice(
        self, principal: Principal, invoice_id: str, idempotency_key: str | None
    ) -> OpenedCheckout:
        async with self._pool.connection() as conn:
            invoice = await _invoice_due(conn, invoice_id)
        if invoice is None or not principal.may_read_account(invoice["account_id"]):
            raise InvoiceNotFound(f"invoice {invoice_id} not found")
        if invoice["status"] != "open":
            raise InvoiceNotPayable(f"invoice {invoice_id} is {invoice['status']}")
        quote = quote_invoice(
            InvoiceBalance(net_due_micros=invoice["net_due_micros"],
                           vat_due_micros=invoice["vat_due_micros"]),
            invoice["currency"],
        )
        fingerprint = _fingerprint("invoice", invoice_id, quote, None)
        return await self._open(
            principal, idempotency_key, fingerprint, quote,
            account_id=invoice["account_id"], purpose="invoice", invoice_id=invoice_id,
            description=f"Invoice {invoice['number']}",
        )

    async def profile(self, account_id: UUID) -> AccountProfile | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT currency, country, vat_number, reverse_charge FROM account_profiles"
                " WHERE account_id = %s",
                (account_id,),
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return AccountProfile(currency=row[0], tax=TaxProfile(country=row[1], vat_number=row[2],
                                                              reverse_charge=row[3]))

    async def set_profile(
        self, principal: Principal, account_id: UUID, profile: AccountProfile
    ) -> AccountProfile:
        vat_rate_for(profile.tax)  # refuse a profile no checkout could use
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO account_profiles"
                " (account_id, currency, country, vat_number, reverse_charge, updated_by)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET"
                " currency = excluded.currency, country = excluded.country,"
                " vat_number = excluded.vat_number, reverse_charge = excluded.reverse_charge,"
                " updated_by = excluded.updated_by, updated_at = now()",
                (account_id, profile.currency, profile.tax.country.upper(),
                 profile.tax.vat_number, profile.tax.reverse_charge, principal.sub),
            )
        return profile

    async def _open(
        self,
        principal: Principal,
        idempotency_key: str | None,
        fingerprint: str,
        quote: Quote,
        *,
        account_id: UUID,
        purpose: Literal["topup", "invoice"],
        invoice_id: str | None,
        description: str,
    ) -> OpenedCheckout:
        async with self._pool.connection() as conn, conn.transaction():
            row = await _claim_checkout(
                conn,
                caller=principal.sub,
                idempotency_key=idempotency_key or f"auto-{uuid.uuid4().hex}",
                fingerprint=fingerprint,
                quote=quote,
                account_id=account_id,
                purpose=purpose,
                invoice_id=invoice_id,
                description=description,
            )
        if row["checkout_url"]:
            return _opened(row)  # a replay of a checkout that was already opened
        record = CheckoutRecord(
            checkout_id=row["checkout_id"], account_id=row["account_id"],
            purpose=row["purpose"], invoice_id=row["invoice_id"], net_minor=row["net_minor"],
            vat_minor=row["vat_minor"], currency=row["currency"],
            description=row["description"], stripe_session_id=None,
        )
        session = await self._stripe.create_checkout_session(
            checkout_session_params(record, self._links), idempotency_key=record.checkout_id
        )
        # Check the provider's answer before anyone is sent to pay it.
        if session.amount_total != record.total_minor or session.currency.upper() != record.currency:
            raise ProviderRejected(
                f"Stripe created session {session.session_id} for {session.amount_total}"
                f" {session.currency}, not {record.total_minor} {record.currency.lower()}"
            )
        expires_at = (datetime.fromtimestamp(session.expires_at, tz=UTC)
                      if session.expires_at else None)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "UPDATE checkouts SET stripe_session_id = %s, checkout_url = %s,"
                " expires_at = %s, status = CASE WHEN status = 'creating' THEN 'open'"
                " ELSE status END, opened_at = coalesce(opened_at, now())"
                " WHERE checkout_id = %s"
                " AND (stripe_session_id IS NULL OR stripe_session_id = %s)"
                " RETURNING *",
                (session.session_id, session.url, expires_at, record.checkout_id,
                 session.session_id),
            )
            updated = await cursor.fetchone()
        if updated is None:
            raise ProviderRejected(
                f"Stripe returned another session for checkout {record.checkout_id}"
            )
        return _opened(updated)


def _terms(principal: Principal, profile: AccountProfile, order: TopUpOrder) -> tuple[str, TaxProfile]:
    """Currency and tax position of a top-up. An operator may state them for this checkout;
    a portal caller gets the account's stored profile and may not choose otherwise."""
    currency = order.currency or profile.currency
    tax = order.tax or profile.tax
    if principal.is_operator:
        return currency, tax
    if currency != profile.currency or tax != profile.tax:
        raise TaxProfileForbidden(
            "the account's currency and tax treatment are set by an operator; "
            "a portal token cannot choose them"
        )
    return profile.currency, profile.tax


def _fingerprint(kind: str, subject: str, quote: Quote, tax: TaxProfile | None) -> str:
    canonical = msgspec.json.encode([
        kind, subject, quote.net_minor, quote.vat_minor, quote.currency, quote.treatment,
        None if tax is None else [tax.country.upper(), tax.vat_number, tax.reverse_charge],
    ])
    return hashlib.sha256(canonical).hexdigest()


async def _claim_checkout(
    conn: Conn,
    *,
    caller: str,
    idempotency_key: str,
    fingerprint: str,
    quote: Quote,
    account_id: UUID,
    purpose: str,
    invoice_id: str | None,
    description: str,
) -> dict[str, Any]:
    """The checkout row for (caller, key): new, or the one a previous identical request made."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "INSERT INTO checkouts (checkout_id, caller, idempotency_key, request_fingerprint,"
            " account_id, purpose, invoice_id, currency, net_minor, vat_minor, vat_rate_bp,"
            " vat_treatment, description)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING *",
            (f"chk-{uuid.uuid4().hex}", caller, idempotency_key, fingerprint, account_id,
             purpose, invoice_id, quote.currency, quote.net_minor, quote.vat_minor,
             quote.vat_rate_bp, quote.treatment, description),
        )
        row = await cursor.fetchone()
        if row is None:
            await cursor.execute(
                "SELECT * FROM checkouts WHERE caller = %s AND idempotency_key = %s",
                (caller, idempotency_key),
            )
            row = await cursor.fetchone()
            assert row is not None
            if row["request_fingerprint"] != fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for a different checkout request"
                )
    return row


def _opened(row: dict[str, Any]) -> OpenedCheckout:
    return OpenedCheckout(
        session_id=row["stripe_session_id"], checkout_url=row["checkout_url"],
        net_minor=row["net_minor"], vat_minor=row["vat_minor"], currency=row["currency"],
        expires_at=row["expires_at"],
    )


async def _invoice_due(conn: Conn, invoice_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT i.invoice_id, i.number, i.account_id, i.currency, i.status,"
            " i.subtotal_micros - coalesce(sum(c.net_micros), 0) AS net_due_micros,"
            " i.vat_total_micros - coalesce(sum(c.vat_micros), 0) AS vat_due_micros"
            " FROM invoices i LEFT JOIN invoice_credit_notes c USING (invoice_id)"
            " WHERE i.invoice_id = %s GROUP BY i.invoice_id",
            (invoice_id,),
        )
        row = await cursor.fetchone()
    if row is not None:
        row["net_due_micros"] = int(row["net_due_micros"])
        row["vat_due_micros"] = int(row["vat_due_micros"])
    return row
