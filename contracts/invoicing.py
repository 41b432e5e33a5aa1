"""invoicing.v1.*: invoices and credit notes as they are issued, paid, voided or overdue;
recurring items (numbers, keywords) as they are charged, fall past due, are suspended or resume.

Totals: `subtotal` excludes VAT, `vat_total` is the VAT, `total` is what the customer owes.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.ids import (
    AccountId,
    CreditNoteId,
    EntryId,
    EventId,
    InvoiceId,
    PaymentId,
    ProductKey,
    Reference,
)
from contracts.money import Amount, Currency
from contracts.text import text_meta
from contracts.timestamps import Timestamp

# A month of usage fits in a few dozen lines; 1,000 leaves room for itemised invoices.
INVOICE_LINES_MAX: Final = 1_000
# Line quantities are monthly sums of usage, so they may exceed one record's 10^9.
LINE_QUANTITY_MAX: Final = 10**15
# Rates times treatments that can meet on one document.
VAT_BREAKDOWN_MAX: Final = 16

InvoiceStatus = Literal["draft", "open", "paid", "overdue", "void"]
VatTreatment = Literal["standard", "zero_rated", "reverse_charge", "exempt", "outside_scope"]

BillingPeriod = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$(?!\n)",
        description="Calendar month, YYYY-MM",
        examples=["2026-10"],
    ),
]
DocumentNumber = Annotated[
    str,
    text_meta(
        min_length=1,
        max_length=64,
        description="Sequential number printed on the document",
        examples=["INV-2026-000123"],
    ),
]
VatRate = Annotated[
    str,
    Meta(
        pattern=r"^(0|[1-9][0-9]?|100)(\.[0-9]{1,4})?$(?!\n)",
        description="VAT rate in percent, a decimal string",
        examples=["20", "0", "5.5"],
    ),
]
NetAmount = Annotated[Amount, Meta(description="Excluding VAT")]
Reason = Annotated[str, text_meta(min_length=1, max_length=500)]


class InvoiceLine(Struct, frozen=True, kw_only=True):
    description: Annotated[str, text_meta(min_length=1, max_length=500)]
    product: ProductKey | None = None
    quantity: Annotated[int, Meta(ge=0, le=LINE_QUANTITY_MAX)]
    unit_price: NetAmount
    net_amount: NetAmount
    vat_rate: VatRate
    vat_treatment: VatTreatment
    vat_amount: Amount
    period: Annotated[
        BillingPeriod | None, Meta(description="The usage period the line bills")
    ] = None
    correction: Annotated[
        bool, Meta(description="Usage of an earlier, already invoiced period")
    ] = False


class VatBreakdown(Struct, frozen=True, kw_only=True):
    """The VAT of a document summed per rate and treatment."""

    vat_rate: VatRate
    vat_treatment: VatTreatment
    net_amount: NetAmount
    vat_amount: Amount


Lines = Annotated[list[InvoiceLine], Meta(max_length=INVOICE_LINES_MAX)]
Breakdown = Annotated[list[VatBreakdown], Meta(max_length=VAT_BREAKDOWN_MAX)]


class InvoiceIssued(Struct, frozen=True, kw_only=True):
    """An invoice left draft and is owed."""

    event_id: EventId
    invoice_id: InvoiceId
    number: DocumentNumber
    account_id: AccountId
    currency: Currency
    period: Annotated[BillingPeriod | None, Meta(description="Absent for ad-hoc invoices")] = (
        None
    )
    lines: Lines
    vat_breakdown: Breakdown
    subtotal: NetAmount
    vat_total: Amount
    total: Amount
    issued_at: Timestamp
    due_at: Timestamp


class InvoicePaid(Struct, frozen=True, kw_only=True):
    """An invoice was paid in full."""

    event_id: EventId
    invoice_id: InvoiceId
    number: DocumentNumber
    account_id: AccountId
    currency: Currency
    amount_paid: Amount
    payment_id: Annotated[
        PaymentId | None, Meta(description="Absent when settled outside our providers")
    ] = None
    paid_at: Timestamp


class InvoiceVoided(Struct, frozen=True, kw_only=True):
    """An issued invoice was cancelled; nothing is owed on it."""

    event_id: EventId
    invoice_id: InvoiceId
    number: DocumentNumber
    account_id: AccountId
    reason: Reason
    voided_at: Timestamp


class CreditNoteIssued(Struct, frozen=True, kw_only=True):
    """A credit note reduced what is owed on an invoice."""

    event_id: EventId
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


class InvoiceOverdue(Struct, frozen=True, kw_only=True):
    """An open invoice passed its due date unpaid; once per invoice."""

    event_id: EventId
    invoice_id: InvoiceId
    number: DocumentNumber
    account_id: AccountId
    currency: Currency
    amount_due: Amount
    due_at: Timestamp
    occurred_at: Timestamp


# ------------------------------------------------------------------ recurring items

RecurringStatus = Literal["active", "past_due", "suspended", "cancelled"]
ChargePeriod = Annotated[
    str,
    Meta(
        pattern=r"^(setup|[0-9]{4}-(0[1-9]|1[0-2]))$(?!\n)",
        description="The calendar month a monthly fee is for (YYYY-MM), or setup",
        examples=["2026-12", "setup"],
    ),
]
RecurringItemId = Annotated[str, Meta(min_length=1, max_length=64,
                                      description="Id of a recurring item (UUID text)")]


class RecurringCharged(Struct, frozen=True, kw_only=True):
    """A recurring item's fee was charged by the ledger (once per item and period)."""

    event_id: EventId
    item_id: RecurringItemId
    account_id: AccountId
    product: ProductKey
    quantity: Annotated[int, Meta(ge=1)]
    reference: Reference
    period: ChargePeriod
    entry_id: EntryId
    amount: Amount
    currency: Currency
    charged_at: Timestamp


class RecurringPastDue(Struct, frozen=True, kw_only=True):
    """A prepay renewal was refused for insufficient funds: retried on the next top-up or
    daily, and suspended after the grace period."""

    event_id: EventId
    item_id: RecurringItemId
    account_id: AccountId
    product: ProductKey
    reference: Reference
    period: ChargePeriod
    suspend_after: Timestamp
    occurred_at: Timestamp


class RecurringSuspended(Struct, frozen=True, kw_only=True):
    """The grace ran out unpaid: stop serving the item (e.g. stop routing the number)."""

    event_id: EventId
    item_id: RecurringItemId
    account_id: AccountId
    product: ProductKey
    reference: Reference
    past_due_since: Timestamp
    occurred_at: Timestamp


class RecurringResumed(Struct, frozen=True, kw_only=True):
    """A past-due or suspended item was paid for and is active again."""

    event_id: EventId
    item_id: RecurringItemId
    account_id: AccountId
    product: ProductKey
    reference: Reference
    occurred_at: Timestamp


CustomerText = Annotated[str, text_meta(min_length=1, max_length=200)]


class CustomerUpdated(Struct, frozen=True, kw_only=True):
    """An account's billing profile was set: what its invoices print about the customer, for
    the accounting and CRM systems (the Xero contact, the HubSpot company). `version` grows by
    one with each change of the account's profile; a consumer keeps the highest it has seen,
    so redelivery and reordering are harmless."""

    event_id: EventId
    account_id: AccountId
    version: Annotated[int, Meta(ge=1)]
    legal_name: CustomerText
    address_lines: Annotated[list[CustomerText], Meta(max_length=8)] = []
    country: Annotated[
        str, Meta(pattern=r"^[A-Z]{2}$(?!\n)",
                  description="The billing address's country, else the account's")
    ] | None = None
    billing_email: Annotated[str, text_meta(min_length=3, max_length=254)] | None = None
    vat_number: Annotated[
        str, text_meta(min_length=1, max_length=32, description="The account's, if any")
    ] | None = None
    updated_at: Timestamp
