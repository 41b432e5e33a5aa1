"""What a document (PDF, email) of an invoice or credit note shows: the view and the two
parties. The seam the renderer (invoicing_service/documents) is wired to."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from contracts.http.invoicing import CreditNoteView, InvoiceView
from invoicing_service.app.customers import Customers
from invoicing_service.app.queries import InvoiceQueries
from invoicing_service.documents import Party


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    view: InvoiceView
    supplier: Party
    customer: Party


@dataclass(frozen=True, slots=True)
class CreditNoteDocument:
    view: CreditNoteView
    invoice_number: str
    supplier: Party
    customer: Party


class Documents:
    def __init__(self, queries: InvoiceQueries, customers: Customers, supplier: Party) -> None:
        self.queries = queries
        self.customers = customers
        self.supplier = supplier

    async def invoice(self, invoice_id: UUID, *, tenant_id: UUID | None) -> InvoiceDocument:
        view = await self.queries.invoice(invoice_id, tenant_id=tenant_id)
        return InvoiceDocument(view=view, supplier=self.supplier,
                               customer=await self.customer(view.account_id))

    async def credit_note(self, credit_note_id: UUID, *,
                          tenant_id: UUID | None) -> CreditNoteDocument:
        view = await self.queries.credit_note(credit_note_id, tenant_id=tenant_id)
        invoice = await self.queries.invoice(UUID(view.invoice_id), tenant_id=tenant_id)
        return CreditNoteDocument(view=view, invoice_number=invoice.number or "",
                                  supplier=self.supplier,
                                  customer=await self.customer(view.account_id))

    async def customer(self, account_id: UUID) -> Party:
        """The billing profile's name and address; the ledger's name and country without one."""
        customer = await self.customers.customer(account_id)
        profile = await self.customers.profile(account_id)
        country = (profile.country if profile and profile.country else None) \
            or (customer.account.country if customer else "GB")
        name = profile.legal_name if profile else \
            (customer.account.name if customer and customer.account.name else str(account_id))
        return Party(name=name, address_lines=tuple(profile.address_lines) if profile else (),
                     country=country,
                     vat_number=customer.account.vat_number if customer else None,
                     email=profile.billing_email if profile else None,
                     po_number=profile.po_number if profile else None)
