"""Bodies of invoicing_service: invoices, billing runs, voids and credit notes."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.http.paging import NextCursor
from contracts.ids import AccountId, BillingRunId, CreditNoteId, InvoiceId
from contracts.invoicing import (
    BillingPeriod,
    Breakdown,
    DocumentNumber,
    InvoiceStatus,
    Lines,
    NetAmount,
    Reason,
)
from contracts.money import Amount, Currency, PositiveAmount
from contracts.timestamps import Timestamp

INVOICES_PAGE_MAX: Final = 500

Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class InvoiceView(Struct, frozen=True, kw_only=True):
    """GET /v1/invoices/{id}: with lines and VAT breakdown."""

    invoice_id: InvoiceId
    number: Annotated[DocumentNumber | None, Meta(description="Null while draft")]
    account_id: AccountId
    status: InvoiceStatus
    currency: Currency
    period: BillingPeriod | None
    lines: Lines
    vat_breakdown: Breakdown
    subtotal: NetAmount
    vat_total: Amount
    total: Amount
    amount_paid: Amount
    amount_due: Amount
    issued_at: Timestamp | None
    due_at: Timestamp | None
    paid_at: Timestamp | None = None
    voided_at: Timestamp | None = None


class InvoiceSummary(Struct, frozen=True, kw_only=True):
    invoice_id: InvoiceId
    number: DocumentNumber | None
    account_id: AccountId
    status: InvoiceStatus
    currency: Currency
    period: BillingPeriod | None
    total: Amount
    amount_due: Amount
    issued_at: Timestamp | None
    due_at: Timestamp | None


class StatusTotal(Struct, frozen=True, kw_only=True):
    """Invoices of one status and currency among all that match the filters."""

    status: InvoiceStatus
    currency: Currency
    count: Count
    total: Amount
    amount_due: Amount


class InvoicesPage(Struct, frozen=True, kw_only=True):
    """GET /v1/invoices: newest first, with totals by status (and currency)."""

    items: Annotated[list[InvoiceSummary], Meta(max_length=INVOICES_PAGE_MAX)]
    totals: Annotated[list[StatusTotal], Meta(max_length=15)]
    next_cursor: NextCursor


class BillingRunRequest(Struct, frozen=True, kw_only=True):
    """POST /v1/billing-runs: idempotent per period."""

    period: BillingPeriod


class BillingRunView(Struct, frozen=True, kw_only=True):
    billing_run_id: BillingRunId
    period: BillingPeriod
    status: Literal["pending", "running", "completed", "failed"]
    invoices_issued: Count
    started_at: Timestamp
    completed_at: Timestamp | None


class VoidRequest(Struct, frozen=True, kw_only=True):
    """POST /v1/invoices/{id}/void."""

    reason: Reason


class CreditNoteRequest(Struct, frozen=True, kw_only=True):
    """POST /v1/invoices/{id}/credit-notes."""

    amount: Annotated[
        PositiveAmount | None,
        Meta(description="Excluding VAT; absent: all that is left of the invoice"),
    ] = None
    reason: Reason


class CreditNoteView(Struct, frozen=True, kw_only=True):
    credit_note_id: CreditNoteId
    number: DocumentNumber
    invoice_id: InvoiceId
    account_id: AccountId
    currency: Currency
    lines: Lines
    vat_breakdown: Breakdown
    subtotal: NetAmount
    vat_total: Amount
    total: Amount
    reason: Reason
    issued_at: Timestamp
