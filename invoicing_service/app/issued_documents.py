"""Every issued invoice and credit note is rendered once, its SHA-256 recorded, and emailed.

Rendering a PDF costs several milliseconds of CPU; doing it inside the issue transaction would
hold a billing run's page of invoices (and their numbers) for that long per invoice. Since the
same document renders to the same bytes every time, the hash can be taken just after issue
without losing anything: this task picks up issued documents that have no `issued_documents`
row (oldest first, `FOR UPDATE SKIP LOCKED`, so several processes share the work), renders
each, and in one transaction records the hash and enqueues the email to the billing profile's
address through the email outbox (idempotency key per document: never twice). A crash before
the commit leaves the document to be rendered again; a crash after it leaves nothing to do.
`GET /v1/invoices/{id}/pdf` renders on demand and checks the bytes against the recorded hash.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final
from uuid import UUID

import structlog
from psycopg_pool import AsyncConnectionPool

from invoicing_service.app.documents import CreditNoteDocument, Documents, InvoiceDocument
from invoicing_service.documents import document_sha256, render_credit_note_pdf, render_invoice_pdf
from invoicing_service.mail.compose import credit_note_email, invoice_email
from invoicing_service.mail.outbox import enqueue_email
from services.backoff import Backoff

log = structlog.get_logger(__name__)

DOCUMENTS_PER_ROUND_MAX: Final = 20

_PENDING: Final = """
SELECT invoice_id, 'invoice' FROM invoices i
 WHERE number IS NOT NULL AND NOT EXISTS
       (SELECT 1 FROM issued_documents d WHERE d.document_id = i.invoice_id)
 ORDER BY issued_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
_PENDING_NOTES: Final = """
SELECT credit_note_id, 'credit_note' FROM credit_notes c
 WHERE NOT EXISTS (SELECT 1 FROM issued_documents d WHERE d.document_id = c.credit_note_id)
 ORDER BY issued_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""


def render(document: InvoiceDocument | CreditNoteDocument) -> bytes:
    if isinstance(document, InvoiceDocument):
        return render_invoice_pdf(document.view, document.supplier, document.customer)
    return render_credit_note_pdf(document.view, document.invoice_number, document.supplier,
                                  document.customer)


class DocumentIssuer:
    def __init__(self, pool: AsyncConnectionPool, documents: Documents, *,
                 wake_mail: Any = None, interval_s: float = 2.0) -> None:
        self._pool = pool
        self._documents = documents
        self._wake_mail = wake_mail
        self._interval_s = interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="document-issuer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)

    async def issue_pending(self) -> int:
        """Render, record and email one round of issued documents; returns how many."""
        done = 0
        async with self._pool.connection() as conn, conn.transaction():
            rows: list[tuple[Any, ...]] = []
            for query in (_PENDING, _PENDING_NOTES):
                cursor = await conn.execute(query, {"limit": DOCUMENTS_PER_ROUND_MAX})
                rows += await cursor.fetchall()
            for document_id, kind in rows:
                await self._issue(conn, UUID(str(document_id)), kind)
                done += 1
        if done and self._wake_mail is not None:
            self._wake_mail()
        return done

    async def _issue(self, conn: Any, document_id: UUID, kind: str) -> None:
        document: InvoiceDocument | CreditNoteDocument
        if kind == "invoice":
            document = await self._documents.invoice(document_id, tenant_id=None)
            number = document.view.number or ""
        else:
            document = await self._documents.credit_note(document_id, tenant_id=None)
            number = document.view.number
        pdf = await asyncio.to_thread(render, document)
        recipients = [document.customer.email] if document.customer.email else []
        await conn.execute(
            "INSERT INTO issued_documents (document_id, kind, account_id, number, sha256,"
            " pdf_bytes, emailed_to) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (document_id, kind, document.view.account_id, number, document_sha256(pdf), len(pdf),
             recipients))
        if not recipients:
            log.info("document issued with no billing email to send it to", kind=kind,
                     number=number, account_id=str(document.view.account_id))
            return
        if isinstance(document, InvoiceDocument):
            email = invoice_email(document.view, pdf, supplier=document.supplier,
                                  recipients=recipients)
        else:
            email = credit_note_email(document.view, document.invoice_number, pdf,
                                      supplier=document.supplier, recipients=recipients)
        await enqueue_email(conn, email)

    async def recorded_sha256(self, document_id: UUID) -> str | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT sha256 FROM issued_documents WHERE document_id = %s", (document_id,))
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def _run(self) -> None:
        backoff = Backoff(1.0, 60.0)
        while not self._stopping.is_set():
            try:
                done = await self.issue_pending()
                backoff.reset()
                wait_s = 0.0 if done >= DOCUMENTS_PER_ROUND_MAX else self._interval_s
            except Exception:
                wait_s = backoff.next_wait_s()
                log.exception("issuing documents failed; will retry", wait_s=round(wait_s, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)
