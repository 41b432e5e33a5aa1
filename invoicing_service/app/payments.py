"""Payments from payments.v1.received: an invoice payment pays its invoice; a top-up yields a
paid receipt, a full VAT invoice for the amount and VAT the customer paid."""

from __future__ import annotations

import asyncio
from typing import Final, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from contracts.money import to_micros
from contracts.payments import PaymentReceived
from invoicing_service.app.customers import Customers, period_of
from invoicing_service.app.invoices import InvoiceOrder, Invoices
from invoicing_service.domain import errors
from invoicing_service.domain.lines import Line
from invoicing_service.domain.vat import UK_STANDARD_RATE, VatNumberCheck, VatTerms, terms_for

RECEIPT_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://billing.example/invoicing/receipts")

Outcome = Literal["applied", "duplicate", "issued_receipt"]


def receipt_id_for(payment_id: str) -> UUID:
    return uuid5(RECEIPT_NAMESPACE, payment_id)


class PaymentIntake:
    def __init__(self, customers: Customers, invoices: Invoices,
                 registry: VatNumberCheck | None = None) -> None:
        self.customers = customers
        self.invoices = invoices
        self.registry = registry

    async def apply(self, payment: PaymentReceived) -> Outcome:
        """Raises InvoiceNotFound / InvoiceNotPayable for a payment that cannot apply."""
        gross_micros = to_micros(payment.amount) + to_micros(payment.vat_amount)
        if payment.purpose == "invoice":
            assert payment.invoice_id is not None  # the contract requires it
            try:
                invoice_id = UUID(payment.invoice_id)
            except ValueError:
                raise errors.InvoiceNotFound(f"invoice {payment.invoice_id} not found") from None
            outcome = await asyncio.to_thread(self.invoices.pay, invoice_id, payment.payment_id,
                                              gross_micros, payment.received_at)
            if outcome == "not_found":
                raise errors.InvoiceNotFound(f"invoice {payment.invoice_id} not found")
            return outcome
        return await self._issue_receipt(payment)

    async def _issue_receipt(self, payment: PaymentReceived) -> Outcome:
        customer = await self.customers.customer(payment.account_id)
        net_micros, vat_micros = to_micros(payment.amount), to_micros(payment.vat_amount)
        if vat_micros > 0:
            terms = VatTerms("standard", UK_STANDARD_RATE)
        elif customer is not None:
            terms = terms_for(customer.tax, self.registry)
        else:
            terms = VatTerms("outside_scope", "0")
        line = Line(description="Account credit (top-up), paid in advance", product=None,
                    quantity=1, unit_price_micros=net_micros, net_micros=net_micros,
                    vat_rate=terms.rate, vat_treatment=terms.treatment, vat_micros=vat_micros)
        order = InvoiceOrder(
            invoice_id=receipt_id_for(payment.payment_id), account_id=payment.account_id,
            currency=payment.currency, period=period_of(payment.received_at),
            lines=[line], kind="receipt", net_terms_days=0,
            payment_id=payment.payment_id, payment_micros=net_micros + vat_micros)
        before = await asyncio.to_thread(self.invoices.find, order.invoice_id)
        if before is not None:
            return "duplicate"
        await asyncio.to_thread(self.invoices.issue, order)
        return "issued_receipt"
