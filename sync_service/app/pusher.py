"""Pushing one queued change to Xero, never twice.

For every document: the external reference (written on success) is read first; a document
whose earlier attempt may have reached Xero (`outcome_unknown`: a timeout, a dropped
connection, a 5xx, a worker that died) is looked up by our number before it is created again;
and every create carries an `Idempotency-Key` derived from the document and the organisation.
Contacts are always looked up by ContactNumber (our account id) before one is created.
A payment, a void or a credit note waits until its invoice is in Xero.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import CreditNoteIssued, InvoiceIssued, InvoiceVoided
from contracts.money import format_micros, to_micros
from contracts.payments import PaymentReceived
from contracts.subjects import PAYMENTS_RECEIVED
from services.outbox import enqueue
from sync_service.app.credentials import CredentialsUnreadable
from sync_service.app.grants import Grants
from sync_service.app.queue import Job, SyncQueue, read_customer, single_statements
from sync_service.app.xero_api import XeroClient
from sync_service.domain import xero_documents as docs
from sync_service.domain.errors import (
    GrantBroken,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnauthorized,
    ProviderUnavailable,
)

log = structlog.get_logger(__name__)

OUTBOX_CHANNEL: Final = "sync_outbox"
BROKEN_RECHECK_S: Final = 60.0
# Mappings and a connection's grant are read at most this often per connection: an operator's
# change applies within it, and a busy organisation does not pay two reads per document.
READ_CACHE_S: Final = 5.0
Conn = psycopg.AsyncConnection[Any]


class Waiting(Exception):
    """The change depends on another that is not in Xero yet."""


@dataclass
class _Attempt:
    job: Job
    grant_id: str
    unknown: bool  # a create of this job may have reached Xero
    # The reference (kind, our id, Xero id) of what the job made last: written with the
    # job's completion, in the same statement.
    made: tuple[str, str, str] | None = None


class XeroPusher:
    def __init__(self, pool: AsyncConnectionPool, xero: XeroClient, grants: Grants,
                 queue: SyncQueue, *, payment_account_code: str, sales_account_code: str,
                 on_announce: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._xero = xero
        self._grants = grants
        self._queue = queue
        self._payment_account_code = payment_account_code
        self._sales_account_code = sales_account_code
        self._on_announce = on_announce
        # A lock lives while someone holds it (a dict kept one per account for ever).
        self._contact_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self._mappings_read: dict[str, tuple[float, docs.Mappings]] = {}
        self._grants_read: dict[str, tuple[float, str | None]] = {}

    async def push(self, job: Job) -> None:
        grant_id = await self._grant_of(job.connection_id)
        attempt = _Attempt(job=job, grant_id=grant_id or "", unknown=job.outcome_unknown)
        try:
            if grant_id is None:
                raise GrantBroken("the connection is not active")
            synced_invoice = await self._push(attempt)
        except Waiting as exc:
            await self._queue.wait(job, unknown=attempt.unknown, reason=str(exc))
        except ProviderRateLimited as exc:
            await self._queue.wait(job, seconds=exc.retry_after_s, unknown=attempt.unknown)
        except GrantBroken as exc:
            self._grants_read.pop(job.connection_id, None)
            await self._queue.wait(job, seconds=BROKEN_RECHECK_S, unknown=attempt.unknown,
                                   reason=str(exc))
        except ProviderRejected as exc:
            log.warning("sync.rejected", job_id=job.job_id, kind=job.kind, error=str(exc))
            await self._queue.bury(job, str(exc), unknown=attempt.unknown)
        except (ProviderError, CredentialsUnreadable, TimeoutError) as exc:
            dead = await self._queue.fail(job, f"{type(exc).__name__}: {exc}",
                                          unknown=attempt.unknown)
            log.warning("sync.failed", job_id=job.job_id, kind=job.kind, dead=dead,
                        error=str(exc))
        else:
            await self._queue.done(job, invoice_synced=synced_invoice, made=attempt.made)

    async def _push(self, attempt: _Attempt) -> str | None:
        kind = attempt.job.kind
        if kind == "invoice":
            return await self._push_invoice(attempt)
        if kind == "payment":
            await self._push_payment(attempt)
        elif kind == "credit_note":
            await self._push_credit_note(attempt)
        elif kind == "void":
            await self._push_void(attempt)
        elif kind == "contact":
            await self._push_contact(attempt)
        elif kind == "fetch_invoice":
            await self._read_back_invoice(attempt)
        else:
            raise ProviderRejected(f"unknown job kind {kind}")
        return None

    # -- calls -----------------------------------------------------------------------------------

    async def _call(self, attempt: _Attempt, method: str, path: str, **kwargs: Any
                    ) -> dict[str, Any]:
        token = await self._grants.access_token(attempt.grant_id)
        tenant = attempt.job.connection_id
        try:
            if method == "GET":
                return await self._xero.get(tenant, token, path, params=kwargs.get("params"))
            return await self._xero.call(tenant, token, method, path, **kwargs)
        except ProviderUnauthorized:
            token = await self._grants.access_token(attempt.grant_id, rejected=token)
            if method == "GET":
                return await self._xero.get(tenant, token, path, params=kwargs.get("params"))
            return await self._xero.call(tenant, token, method, path, **kwargs)

    async def _create(self, attempt: _Attempt, method: str, path: str, body: dict[str, Any],
                      key: str) -> dict[str, Any]:
        attempt.unknown = True
        try:
            answer = await self._call(attempt, method, path, body=body, idempotency_key=key)
        except ProviderUnavailable as exc:
            attempt.unknown = exc.outcome_unknown
            raise
        except ProviderError:
            attempt.unknown = False  # Xero answered: nothing was created
            raise
        attempt.unknown = False
        return answer

    async def _find(self, attempt: _Attempt, path: str, collection: str, where: str
                    ) -> dict[str, Any] | None:
        answer = await self._call(attempt, "GET", path, params={"where": where})
        live = [item for item in answer.get(collection) or []
                if item.get("Status") not in ("DELETED", "VOIDED", "ARCHIVED")]
        return live[0] if live else None

    # -- references ----------------------------------------------------------------------------

    async def _ref(self, connection_id: str, kind: str, our_id: str) -> str | None:
        async with single_statements(self._pool) as conn:
            row = await (await conn.execute(
                "SELECT external_id FROM external_refs WHERE connection_id = %s AND kind = %s"
                " AND our_id = %s", (connection_id, kind, our_id))).fetchone()
        return None if row is None else str(row[0])

    async def _remember(self, connection_id: str, kind: str, our_id: str, external_id: str
                        ) -> None:
        async with single_statements(self._pool) as conn:
            await conn.execute(
                "INSERT INTO external_refs (connection_id, kind, our_id, external_id)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (connection_id, kind, our_id, external_id))

    async def _grant_of(self, connection_id: str) -> str | None:
        cached = self._grants_read.get(connection_id)
        if cached is not None and time.monotonic() - cached[0] < READ_CACHE_S:
            return cached[1]
        grant_id = await self._read_grant_of(connection_id)
        self._grants_read[connection_id] = (time.monotonic(), grant_id)
        return grant_id

    async def _read_grant_of(self, connection_id: str) -> str | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT c.grant_id FROM connections c JOIN xero_grants g USING (grant_id)"
                " WHERE c.connection_id = %s AND c.status = 'active' AND g.status = 'active'",
                (connection_id,))).fetchone()
        return None if row is None else str(row[0])

    async def _mappings(self, connection_id: str) -> docs.Mappings:
        cached = self._mappings_read.get(connection_id)
        if cached is not None and time.monotonic() - cached[0] < READ_CACHE_S:
            return cached[1]
        mappings = await self._read_mappings(connection_id)
        self._mappings_read[connection_id] = (time.monotonic(), mappings)
        return mappings

    async def _read_mappings(self, connection_id: str) -> docs.Mappings:
        async with self._pool.connection() as conn:
            products = await (await conn.execute(
                "SELECT product, item_code, account_code, tax_type FROM mappings"
                " WHERE connection_id IN ('*', %s) ORDER BY connection_id = '*' DESC",
                (connection_id,))).fetchall()
            taxes = await (await conn.execute(
                "SELECT vat_treatment, vat_rate, tax_type FROM tax_mappings"
                " WHERE connection_id IN ('*', %s) ORDER BY connection_id = '*' DESC",
                (connection_id,))).fetchall()
        # Rows for this connection come last and override the '*' ones.
        return docs.Mappings(
            products={r[0]: docs.ProductMapping(r[1], r[2], r[3]) for r in products},
            tax_types={(r[0], r[1]): r[2] for r in taxes},
            sales_account_code=self._sales_account_code)

    # -- documents -------------------------------------------------------------------------------

    async def _contact(self, attempt: _Attempt, account_id: str) -> str:
        return (await self._contact_found_or_made(attempt, account_id))[0]

    async def _contact_found_or_made(self, attempt: _Attempt, account_id: str
                                     ) -> tuple[str, bool]:
        """The account's contact in this organisation, made with the customer's details when
        there was none; and whether it was made now."""
        job = attempt.job
        connection_id = job.connection_id
        if job.contact_ref is not None and str(job.account_id) == account_id:
            return job.contact_ref, False  # read with the claim
        lock = self._contact_locks.setdefault((connection_id, account_id), asyncio.Lock())
        async with lock:
            found = await self._ref(connection_id, "contact", account_id)
            if found is not None:
                return found, False
            number = docs.contact_number(account_id)
            existing = await self._find(attempt, "/Contacts", "Contacts",
                                        f'ContactNumber=="{number}"')
            made = existing is None
            if existing is None:
                customer = await self._customer(account_id)
                key = docs.idempotency_key("contact", connection_id, account_id)
                try:
                    answer = await self._create(
                        attempt, "PUT", "/Contacts",
                        {"Contacts": [docs.contact_payload(account_id, customer)]}, key)
                except ProviderRejected as exc:
                    if customer is None or not docs.name_taken(exc):
                        raise
                    # Another customer has this name in the organisation.
                    answer = await self._create(
                        attempt, "PUT", "/Contacts",
                        {"Contacts": [docs.contact_payload(account_id, customer, True)]},
                        docs.idempotency_key("contact-named", connection_id, account_id))
                existing = answer["Contacts"][0]
            contact_id = str(existing["ContactID"])
            await self._remember(connection_id, "contact", account_id, contact_id)
            return contact_id, made

    async def _customer(self, account_id: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await read_customer(conn, account_id)

    async def _push_contact(self, attempt: _Attempt) -> None:
        """The customer's billing profile changed: its contact gets the newest details (made
        with them if it did not exist). An update is idempotent by nature."""
        account_id = attempt.job.subject_id
        contact_id, made = await self._contact_found_or_made(attempt, account_id)
        customer = await self._customer(account_id)
        if made or customer is None:
            return
        path = f"/Contacts/{contact_id}"
        try:
            await self._call(attempt, "POST", path, body={"Contacts": [
                {"ContactID": contact_id, **docs.contact_details(account_id, customer)}]})
        except ProviderRejected as exc:
            if not docs.name_taken(exc):
                raise
            await self._call(attempt, "POST", path, body={"Contacts": [
                {"ContactID": contact_id, **docs.contact_details(account_id, customer, True)}]})

    async def _push_invoice(self, attempt: _Attempt) -> str:
        invoice = msgspec.convert(attempt.job.payload, InvoiceIssued)
        connection_id = attempt.job.connection_id
        if attempt.job.ref is not None:  # read with the claim
            return invoice.invoice_id
        contact_id = await self._contact(attempt, str(invoice.account_id))
        existing = None
        if attempt.unknown:
            answer = await self._call(attempt, "GET", "/Invoices",
                                      params={"InvoiceNumbers": invoice.number})
            existing = next((i for i in answer.get("Invoices") or []
                             if i.get("Type", "ACCREC") == "ACCREC"
                             and i.get("Status") not in ("DELETED",)), None)
            attempt.unknown = False
            if existing is not None:
                log.info("sync.found_after_unknown_outcome", kind="invoice",
                         invoice_id=invoice.invoice_id)
        if existing is None:
            payload = docs.invoice_payload(invoice, contact_id,
                                           await self._mappings(connection_id))
            key = docs.idempotency_key("invoice", connection_id, invoice.invoice_id)
            answer = await self._create(attempt, "PUT", "/Invoices", {"Invoices": [payload]}, key)
            existing = answer["Invoices"][0]
        attempt.made = ("invoice", invoice.invoice_id, str(existing["InvoiceID"]))
        return invoice.invoice_id

    async def _invoice_ref(self, attempt: _Attempt, invoice_id: str) -> str:
        found = await self._ref(attempt.job.connection_id, "invoice", invoice_id)
        if found is None:
            raise Waiting(f"invoice {invoice_id} is not in Xero yet")
        return found

    async def _push_payment(self, attempt: _Attempt) -> None:
        payment = msgspec.convert(attempt.job.payload, PaymentReceived)
        connection_id = attempt.job.connection_id
        if attempt.job.ref is not None:  # read with the claim
            return
        assert payment.invoice_id is not None
        invoice_xero_id = await self._invoice_ref(attempt, payment.invoice_id)
        existing = None
        if attempt.unknown:
            existing = await self._find(attempt, "/Payments", "Payments",
                                        f'Reference=="{payment.payment_id}"')
            attempt.unknown = False
        if existing is None:
            async with self._pool.connection() as conn:
                totals = await (await conn.execute(
                    "SELECT subtotal_micros, vat_total_micros FROM invoices WHERE invoice_id = %s",
                    (payment.invoice_id,))).fetchone()
            amount = docs.payment_cents(
                to_micros(payment.amount), to_micros(payment.vat_amount),
                invoice_subtotal_micros=totals[0] if totals else None,
                invoice_vat_micros=totals[1] if totals else None)
            body = docs.payment_payload(invoice_xero_id=invoice_xero_id,
                                        account_code=self._payment_account_code,
                                        amount=amount, reference=payment.payment_id,
                                        on=payment.received_at)
            key = docs.idempotency_key("payment", connection_id, payment.payment_id)
            answer = await self._create(attempt, "PUT", "/Payments", {"Payments": [body]}, key)
            existing = answer["Payments"][0]
        attempt.made = ("payment", payment.payment_id, str(existing["PaymentID"]))

    async def _push_credit_note(self, attempt: _Attempt) -> None:
        note = msgspec.convert(attempt.job.payload, CreditNoteIssued)
        connection_id = attempt.job.connection_id
        invoice_xero_id = await self._invoice_ref(attempt, note.invoice_id)
        note_xero_id = await self._ref(connection_id, "credit_note", note.credit_note_id)
        if note_xero_id is None:
            contact_id = await self._contact(attempt, str(note.account_id))
            existing = None
            if attempt.unknown:
                existing = await self._find(attempt, "/CreditNotes", "CreditNotes",
                                            f'CreditNoteNumber=="{note.number}"')
            if existing is None:
                payload = docs.credit_note_payload(note, contact_id,
                                                   await self._mappings(connection_id))
                key = docs.idempotency_key("credit_note", connection_id, note.credit_note_id)
                answer = await self._create(attempt, "PUT", "/CreditNotes",
                                            {"CreditNotes": [payload]}, key)
                existing = answer["CreditNotes"][0]
            note_xero_id = str(existing["CreditNoteID"])
            await self._remember(connection_id, "credit_note", note.credit_note_id, note_xero_id)
            attempt.unknown = False
        if await self._ref(connection_id, "allocation", note.credit_note_id) is not None:
            return
        if attempt.unknown:
            answer = await self._call(attempt, "GET", f"/CreditNotes/{note_xero_id}")
            current = (answer.get("CreditNotes") or [{}])[0]
            if any((a.get("Invoice") or {}).get("InvoiceID") == invoice_xero_id
                   for a in current.get("Allocations") or []):
                await self._remember(connection_id, "allocation", note.credit_note_id,
                                     invoice_xero_id)
                return
        body = docs.allocation_payload(invoice_xero_id, to_micros(note.total), note.issued_at)
        key = docs.idempotency_key("allocation", connection_id, note.credit_note_id)
        await self._create(attempt, "PUT", f"/CreditNotes/{note_xero_id}/Allocations", body, key)
        await self._remember(connection_id, "allocation", note.credit_note_id, invoice_xero_id)

    async def _push_void(self, attempt: _Attempt) -> None:
        voided = msgspec.convert(attempt.job.payload, InvoiceVoided)
        invoice_xero_id = await self._invoice_ref(attempt, voided.invoice_id)
        body = {"Invoices": [{"InvoiceID": invoice_xero_id, "Status": "VOIDED"}]}
        key = docs.idempotency_key("void", attempt.job.connection_id, voided.invoice_id)
        await self._create(attempt, "POST", f"/Invoices/{invoice_xero_id}", body, key)

    # -- reading back (webhooks) -----------------------------------------------------------------

    async def _read_back_invoice(self, attempt: _Attempt) -> None:
        """A Xero invoice changed: payments recorded in Xero against one of our invoices
        become payments.v1.received, once each."""
        connection_id = attempt.job.connection_id
        xero_invoice_id = str(attempt.job.payload["xero_invoice_id"])
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT i.invoice_id, i.account_id, i.currency, i.total_micros,"
                " i.vat_total_micros FROM external_refs r JOIN invoices i ON i.invoice_id ="
                " r.our_id WHERE r.connection_id = %s AND r.kind = 'invoice'"
                " AND r.external_id = %s", (connection_id, xero_invoice_id))).fetchone()
        if row is None:
            return  # not one of ours
        answer = await self._call(attempt, "GET", f"/Invoices/{xero_invoice_id}")
        invoice = (answer.get("Invoices") or [{}])[0]
        announced = 0
        for payment in invoice.get("Payments") or []:
            if await self._announce_xero_payment(connection_id, row, payment):
                announced += 1
        if announced and self._on_announce is not None:
            self._on_announce()

    async def _announce_xero_payment(self, connection_id: str, invoice: tuple[Any, ...],
                                     payment: dict[str, Any]) -> bool:
        invoice_id, account_id, currency, total_micros, vat_total_micros = invoice
        xero_payment_id = str(payment.get("PaymentID") or "")
        reference = str(payment.get("Reference") or "")
        if not xero_payment_id:
            return False
        async with self._pool.connection() as conn, conn.transaction():
            ours = await (await conn.execute(
                "SELECT 1 FROM external_refs WHERE connection_id = %s AND kind = 'payment'"
                " AND external_id = %s UNION ALL SELECT 1 FROM sync_jobs WHERE kind = 'payment'"
                " AND subject_id = %s LIMIT 1",
                (connection_id, xero_payment_id, reference))).fetchone()
            if ours is not None:
                return False  # a payment we pushed ourselves
            payment_id = f"xero-{xero_payment_id}"
            cursor = await conn.execute(
                "INSERT INTO xero_payments_seen (connection_id, xero_payment_id, payment_id)"
                " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (connection_id, xero_payment_id, payment_id))
            if cursor.rowcount == 0:
                return False
            gross = docs.decimal_to_micros(payment.get("Amount", "0"))
            net, vat = docs.split_gross(gross, int(total_micros), int(vat_total_micros))
            message = PaymentReceived(
                payment_id=payment_id, provider="xero", provider_reference=xero_payment_id,
                account_id=account_id, purpose="invoice", amount=format_micros(net),
                vat_amount=format_micros(vat), currency=currency, invoice_id=invoice_id,
                received_at=datetime.now(UTC))
            await enqueue(conn, PAYMENTS_RECEIVED, message, channel=OUTBOX_CHANNEL)
        log.info("sync.xero_payment_announced", payment_id=payment_id, invoice_id=invoice_id)
        return True
