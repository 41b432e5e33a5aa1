"""Invoice and credit-note documents: UK VAT invoices as PDF, the same bytes every time.

The core renders a document when it is issued, records `document_sha256` of the bytes, and
renders it again whenever it is downloaded or emailed: the layout depends only on the view,
the two parties and reportlab's version, so the hash still matches.
"""

from invoicing_service.documents.party import Party, PartyError, SterlingVat
from invoicing_service.documents.pdf import (
    document_sha256,
    render_credit_note_pdf,
    render_invoice_pdf,
)

__all__ = [
    "Party",
    "PartyError",
    "SterlingVat",
    "document_sha256",
    "render_credit_note_pdf",
    "render_invoice_pdf",
]
