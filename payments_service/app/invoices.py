"""The invoices this service may be asked to collect, as announced on invoicing.v1.*.

The payments service does not read invoicing's tables; it keeps what it needs from the
invoicing events. Every event is applied idempotently (an issue is inserted once, a status
only moves forward, a credit note is keyed by its id), so redelivery and reordering between
subjects are harmless.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import CreditNoteIssued, InvoiceIssued, InvoicePaid, InvoiceVoided
from contracts.money import to_micros

InvoiceEvent = InvoiceIssued | InvoicePaid | InvoiceVoided | CreditNoteIssued


class InvoiceBook:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def apply(self, event: InvoiceEvent) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            if isinstance(event, InvoiceIssued):
                await conn.execute(
                    "INSERT INTO invoices (invoice_id, number, account_id, currency,"
                    " subtotal_micros, vat_total_micros, status, issued_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, 'open', %s)"
                    " ON CONFLICT (invoice_id) DO NOTHING",
                    (event.invoice_id, event.number, event.account_id, event.currency,
                     to_micros(event.subtotal), to_micros(event.vat_total), event.issued_at),
                )
            elif isinstance(event, InvoicePaid | InvoiceVoided):
                status = "paid" if isinstance(event, InvoicePaid) else "void"
                # void is final; paid is final unless the invoice is voided afterwards.
                await conn.execute(
                    "UPDATE invoices SET status = %s, updated_at = now()"
                    " WHERE invoice_id = %s AND status <> 'void'",
                    (status, event.invoice_id),
                )
            else:
                await conn.execute(
                    "INSERT INTO invoice_credit_notes (credit_note_id, invoice_id, net_micros,"
                    " vat_micros) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (event.credit_note_id, event.invoice_id, to_micros(event.subtotal),
                     to_micros(event.vat_total)),
                )
