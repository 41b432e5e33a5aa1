"""The emails of issued documents: an invoice or a credit note, its PDF attached.

Their idempotency keys are the documents' ids, so issuing (or re-driving the issue of) one
document enqueues one email, ever.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.http.invoicing import CreditNoteView, InvoiceView
from invoicing_service.documents import Party
from invoicing_service.documents.wording import long_date, money, utc_day
from invoicing_service.mail.message import Attachment, InvalidEmail, OutgoingEmail

PDF: str = "application/pdf"


def invoice_email(invoice: InvoiceView, pdf: bytes, *, supplier: Party,
                  recipients: Sequence[str]) -> OutgoingEmail:
    if invoice.number is None:
        raise InvalidEmail("a draft invoice is not emailed")
    due = f" by {long_date(utc_day(invoice.due_at))}" if invoice.due_at else ""
    body = "\n".join([
        "Hello,",
        "",
        f"Please find attached invoice {invoice.number} from {supplier.name}.",
        "",
        f"Total: {money(invoice.total, invoice.currency)}",
        f"Amount due: {money(invoice.amount_due, invoice.currency)}{due}",
        "",
        "This email was sent automatically; please do not reply to it.",
    ])
    return OutgoingEmail(
        idempotency_key=f"invoice-issued:{invoice.invoice_id}",
        account_id=invoice.account_id,
        kind="invoice",
        recipients=tuple(recipients),
        subject=f"Invoice {invoice.number} from {supplier.name}",
        text_body=body,
        attachments=(Attachment(filename=f"{invoice.number}.pdf", content_type=PDF,
                                content=pdf),),
    )


def credit_note_email(note: CreditNoteView, invoice_number: str, pdf: bytes, *,
                      supplier: Party, recipients: Sequence[str]) -> OutgoingEmail:
    body = "\n".join([
        "Hello,",
        "",
        f"Please find attached credit note {note.number} from {supplier.name}, which reduces"
        f" the amount owed on invoice {invoice_number}.",
        "",
        f"Total credited: {money(note.total, note.currency)}",
        "",
        "This email was sent automatically; please do not reply to it.",
    ])
    return OutgoingEmail(
        idempotency_key=f"credit-note-issued:{note.credit_note_id}",
        account_id=note.account_id,
        kind="credit_note",
        recipients=tuple(recipients),
        subject=f"Credit note {note.number} from {supplier.name}",
        text_body=body,
        attachments=(Attachment(filename=f"{note.number}.pdf", content_type=PDF,
                                content=pdf),),
    )
