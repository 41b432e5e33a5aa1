"""The accountant's export of a period: every invoice and credit note issued in the month,
one CSV row each, amounts as decimal strings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Final

import msgspec
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.invoicing import VatBreakdown

COLUMNS: Final = ["document", "number", "issued_at", "account_id", "currency", "net", "vat",
                  "total", "status", "vat_treatments", "period", "invoice_number"]
_invoice_decoder = msgspec.json.Decoder(InvoiceView)
_note_decoder = msgspec.json.Decoder(CreditNoteView)


def month_bounds(period: str) -> tuple[datetime, datetime]:
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


async def export_rows(pool: AsyncConnectionPool, period: str) -> AsyncIterator[list[str]]:
    """Invoices, then credit notes, each in number order; streamed, not loaded whole."""
    start, end = month_bounds(period)
    async with pool.connection() as conn:
        numbers: dict[str, str] = {}
        cur = conn.cursor(name="invoicing_export_invoices")
        await cur.execute("SELECT view FROM invoices WHERE issued_at >= %s AND issued_at < %s"
                          " ORDER BY number", (start, end))
        async for (raw,) in cur:
            view = _invoice_decoder.decode(raw)
            numbers[view.invoice_id] = view.number or ""
            yield ["invoice", view.number or "", _time(view.issued_at), str(view.account_id),
                   view.currency, view.subtotal, view.vat_total, view.total, view.status,
                   _treatments(view.vat_breakdown), view.period or "", ""]
        await cur.close()
        notes = conn.cursor(name="invoicing_export_notes")
        await notes.execute(
            "SELECT c.view, i.number FROM credit_notes c JOIN invoices i USING (invoice_id)"
            " WHERE c.issued_at >= %s AND c.issued_at < %s ORDER BY c.number", (start, end))
        async for raw, invoice_number in notes:
            note = _note_decoder.decode(raw)
            yield ["credit_note", note.number, _time(note.issued_at), str(note.account_id),
                   note.currency, note.subtotal, note.vat_total, note.total, "issued",
                   _treatments(note.vat_breakdown), "", invoice_number or ""]
        await notes.close()


def _time(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).isoformat()


def _treatments(groups: list[VatBreakdown]) -> str:
    return ";".join(f"{g.vat_treatment}@{g.vat_rate}%" for g in groups)
