"""The contract shapes of an invoice and its credit notes, from the aggregate."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceLine,
    InvoiceOverdue,
    InvoicePaid,
    InvoiceVoided,
    VatBreakdown,
)
from contracts.money import format_micros
from invoicing_service.domain.invoice import CreditNote, Invoice
from invoicing_service.domain.lines import Line, breakdown


def _utc(at: datetime | None) -> datetime | None:
    return None if at is None else at.astimezone(UTC)


def contract_lines(lines: tuple[Line, ...] | list[Line]) -> list[InvoiceLine]:
    return [InvoiceLine(description=line.description[:500], product=line.product,
                        quantity=line.quantity,
                        unit_price=format_micros(line.unit_price_micros),
                        net_amount=format_micros(line.net_micros), vat_rate=line.vat_rate,
                        vat_treatment=line.vat_treatment,  # type: ignore[arg-type]
                        vat_amount=format_micros(line.vat_micros), period=line.period,
                        correction=line.correction)
            for line in lines]


def contract_breakdown(lines: tuple[Line, ...] | list[Line]) -> list[VatBreakdown]:
    return [VatBreakdown(vat_rate=g.vat_rate, vat_treatment=g.vat_treatment,  # type: ignore[arg-type]
                         net_amount=format_micros(g.net_micros),
                         vat_amount=format_micros(g.vat_micros))
            for g in breakdown(lines)]


def invoice_view(invoice: Invoice) -> InvoiceView:
    return InvoiceView(
        invoice_id=str(invoice.id), number=invoice.number, account_id=UUID(invoice.account_id),
        status=invoice.status, currency=invoice.currency,  # type: ignore[arg-type]
        period=invoice.period, lines=contract_lines(invoice.lines),
        vat_breakdown=contract_breakdown(invoice.lines),
        subtotal=format_micros(invoice.subtotal_micros),
        vat_total=format_micros(invoice.vat_total_micros),
        total=format_micros(invoice.total_micros),
        amount_paid=format_micros(invoice.paid_micros),
        amount_due=format_micros(invoice.amount_due_micros),
        issued_at=_utc(invoice.issued_at), due_at=_utc(invoice.due_at),
        paid_at=_utc(invoice.paid_at), voided_at=_utc(invoice.voided_at),
    )


def issued_views(invoice: Invoice) -> tuple[InvoiceView, InvoiceIssued]:
    """The read model's view and the `issued` message of a just-issued invoice, with their
    lines and VAT breakdown converted once (a billing run issues thousands)."""
    assert invoice.number and invoice.issued_at and invoice.due_at
    lines = contract_lines(invoice.lines)
    vat = contract_breakdown(invoice.lines)
    subtotal = format_micros(invoice.subtotal_micros)
    vat_total = format_micros(invoice.vat_total_micros)
    total = format_micros(invoice.total_micros)
    account_id = UUID(invoice.account_id)
    issued_at, due_at = invoice.issued_at.astimezone(UTC), invoice.due_at.astimezone(UTC)
    message = InvoiceIssued(
        event_id=f"issued:{invoice.id}", invoice_id=str(invoice.id), number=invoice.number,
        account_id=account_id, currency=invoice.currency,  # type: ignore[arg-type]
        period=invoice.period, lines=lines, vat_breakdown=vat, subtotal=subtotal,
        vat_total=vat_total, total=total, issued_at=issued_at, due_at=due_at)
    view = InvoiceView(
        invoice_id=str(invoice.id), number=invoice.number, account_id=account_id,
        status=invoice.status, currency=invoice.currency,  # type: ignore[arg-type]
        period=invoice.period, lines=lines, vat_breakdown=vat, subtotal=subtotal,
        vat_total=vat_total, total=total,
        amount_paid=format_micros(invoice.paid_micros),
        amount_due=format_micros(invoice.amount_due_micros),
        issued_at=_utc(invoice.issued_at), due_at=_utc(invoice.due_at),
        paid_at=_utc(invoice.paid_at), voided_at=_utc(invoice.voided_at),
    )
    return view, message


def credit_note_view(invoice: Invoice, note: CreditNote) -> CreditNoteView:
    return CreditNoteView(
        credit_note_id=note.credit_note_id, number=note.number, invoice_id=str(invoice.id),
        account_id=UUID(invoice.account_id), currency=invoice.currency,  # type: ignore[arg-type]
        lines=contract_lines(note.lines), vat_breakdown=contract_breakdown(note.lines),
        subtotal=format_micros(note.subtotal_micros),
        vat_total=format_micros(note.vat_total_micros), total=format_micros(note.total_micros),
        reason=note.reason, issued_at=note.issued_at.astimezone(UTC),
    )


def issued_message(invoice: Invoice) -> InvoiceIssued:
    assert invoice.number and invoice.issued_at and invoice.due_at
    return InvoiceIssued(
        event_id=f"issued:{invoice.id}", invoice_id=str(invoice.id), number=invoice.number,
        account_id=UUID(invoice.account_id), currency=invoice.currency,  # type: ignore[arg-type]
        period=invoice.period, lines=contract_lines(invoice.lines),
        vat_breakdown=contract_breakdown(invoice.lines),
        subtotal=format_micros(invoice.subtotal_micros),
        vat_total=format_micros(invoice.vat_total_micros),
        total=format_micros(invoice.total_micros),
        issued_at=invoice.issued_at.astimezone(UTC), due_at=invoice.due_at.astimezone(UTC),
    )


def paid_message(invoice: Invoice, payment_id: str | None) -> InvoicePaid:
    assert invoice.number and invoice.paid_at
    return InvoicePaid(
        event_id=f"paid:{invoice.id}", invoice_id=str(invoice.id), number=invoice.number,
        account_id=UUID(invoice.account_id), currency=invoice.currency,  # type: ignore[arg-type]
        amount_paid=format_micros(invoice.paid_micros), payment_id=payment_id,
        paid_at=invoice.paid_at.astimezone(UTC),
    )


def voided_message(invoice: Invoice) -> InvoiceVoided:
    assert invoice.number and invoice.voided_at and invoice.void_reason
    return InvoiceVoided(
        event_id=f"voided:{invoice.id}", invoice_id=str(invoice.id), number=invoice.number,
        account_id=UUID(invoice.account_id), reason=invoice.void_reason,
        voided_at=invoice.voided_at.astimezone(UTC),
    )


def credit_note_message(invoice: Invoice, note: CreditNote) -> CreditNoteIssued:
    view = credit_note_view(invoice, note)
    return CreditNoteIssued(
        event_id=f"credit_note_issued:{note.credit_note_id}", credit_note_id=note.credit_note_id,
        number=note.number, invoice_id=str(invoice.id), account_id=view.account_id,
        currency=view.currency, lines=view.lines, vat_breakdown=view.vat_breakdown,
        subtotal=view.subtotal, vat_total=view.vat_total, total=view.total, reason=note.reason,
        issued_at=view.issued_at,
    )


def overdue_message(invoice: Invoice, at: datetime) -> InvoiceOverdue:
    assert invoice.number and invoice.due_at
    return InvoiceOverdue(
        event_id=f"overdue:{invoice.id}", invoice_id=str(invoice.id), number=invoice.number,
        account_id=UUID(invoice.account_id), currency=invoice.currency,  # type: ignore[arg-type]
        amount_due=format_micros(invoice.amount_due_micros),
        due_at=invoice.due_at.astimezone(UTC), occurred_at=at.astimezone(UTC),
    )
