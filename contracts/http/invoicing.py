"""Bodies of invoicing_service: invoices, billing runs, voids and credit notes; recurring
items, alerts and notification settings."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.http.paging import NextCursor
from contracts.ids import (
    AccountId,
    BillingRunId,
    CreditNoteId,
    EntryId,
    InvoiceId,
    ProductKey,
)
from contracts.invoicing import (
    BillingPeriod,
    Breakdown,
    ChargePeriod,
    DocumentNumber,
    InvoiceStatus,
    Lines,
    NetAmount,
    Reason,
    RecurringItemId,
    RecurringStatus,
)
from contracts.money import Amount, Currency, PositiveAmount
from contracts.timestamps import Timestamp

# An address: no spaces or control characters, one @, a dot after it. The characters are
# spelled out (not \s) so Python and JSON Schema (ECMA) regexes agree on what they match.
_NOT_IN_ADDRESS = r"@ \t\r\n\f\v\x00-\x1f\x7f-\x9f"
EMAIL_PATTERN: Final = rf"^[^{_NOT_IN_ADDRESS}]+@[^{_NOT_IN_ADDRESS}]+\.[^{_NOT_IN_ADDRESS}]+$(?!\n)"

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


# ------------------------------------------------------------------ recurring items

RECURRING_ITEMS_MAX: Final = 1_000
RECURRING_CHARGES_MAX: Final = 10_000
ALERTS_PAGE_MAX: Final = 500
RECIPIENTS_EXTRA_MAX: Final = 10

ItemReference = Annotated[
    str,
    Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$(?!\n)",
         description="The number or keyword itself", examples=["+447700900123", "PIZZA"]),
]
ChargeStatus = Literal["pending", "charged", "refused", "failed"]
AlertKind = Literal["balance_low", "renewal_past_due", "renewal_suspended", "invoice_overdue"]
EmailAddress = Annotated[
    str,
    Meta(min_length=3, max_length=254, pattern=EMAIL_PATTERN,
         examples=["billing@example.com"]),
]


class CreateRecurringItem(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts/{id}/recurring-items (operator, Idempotency-Key)."""

    product: Annotated[ProductKey, Meta(description="A recurring product: vmn, shortcode_keyword")]
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]
    reference: ItemReference
    starts_on: Annotated[date, Meta(description="First day of service; the setup fee and the "
                                                "first (prorated) month are charged that day")]
    ends_on: Annotated[date | None, Meta(description="Last day of service, inclusive")] = None


class CancelRecurringItem(Struct, frozen=True, kw_only=True):
    """POST /v1/recurring-items/{item_id}/cancel (operator)."""

    at: Annotated[Literal["now", "period_end"], Meta(
        description="now: the service ends today (this month was charged in advance and is "
                    "not refunded); period_end: at the end of the current month")]


class ChangeRecurringPlan(Struct, frozen=True, kw_only=True):
    """POST /v1/recurring-items/{item_id}/plan-change (operator): a new product or quantity
    from the next calendar month on; the current month keeps the current plan."""

    product: Annotated[ProductKey | None, Meta(description="Absent: the same product")] = None
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


class ChangeRecurringItem(Struct, frozen=True, kw_only=True):
    """POST /v1/recurring-items/{item_id}/change (operator, Idempotency-Key): a new product
    or quantity, from the next calendar month (`next_period`) or at once with proration
    (`now`: the unused days of the current plan are credited back and the new plan is
    charged for the rest of the month, each by days). Absent `effective`: the product's
    setting (next_period unless the product says otherwise)."""

    product: Annotated[ProductKey | None, Meta(description="Absent: the same product")] = None
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    effective: Literal["now", "next_period"] | None = None


class PlanChangeView(Struct, frozen=True, kw_only=True):
    """An immediate plan change: the credit of the unused days of the plan left and the
    charge of the new plan for the rest of the month, each a ledger entry."""

    change_id: str
    period: BillingPeriod
    effective_on: date
    from_product: ProductKey
    from_quantity: int
    to_product: ProductKey
    to_quantity: int
    credit: Amount
    credit_entry_id: EntryId | None = None
    amount: Annotated[Amount, Meta(description="The new plan's charge for the rest of the month")]
    entry_id: EntryId
    unit_price: Amount
    currency: Currency
    days: int | None = None
    days_in_period: int | None = None
    changed_at: Timestamp


class PendingPlanChange(Struct, frozen=True, kw_only=True):
    product: ProductKey
    quantity: int
    from_period: BillingPeriod


class RecurringChargeView(Struct, frozen=True, kw_only=True):
    period: ChargePeriod
    product: ProductKey
    quantity: int
    days: int | None = None
    days_in_period: int | None = None
    due_on: date
    status: ChargeStatus
    amount: Amount | None = None
    entry_id: EntryId | None = None
    attempts: int
    charged_at: Timestamp | None = None


class RecurringItemView(Struct, frozen=True, kw_only=True):
    item_id: RecurringItemId
    account_id: AccountId
    product: ProductKey
    quantity: int
    reference: ItemReference
    starts_on: date
    ends_on: date | None = None
    status: RecurringStatus
    past_due_since: Timestamp | None = None
    suspended_at: Timestamp | None = None
    pending_change: PendingPlanChange | None = None
    created_at: Timestamp
    charges: Annotated[list[RecurringChargeView], Meta(max_length=RECURRING_CHARGES_MAX)]
    plan_changes: Annotated[list[PlanChangeView], Meta(
        max_length=RECURRING_CHARGES_MAX,
        description="Immediate plan changes, oldest first")] = []


class RecurringItemsPage(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}/recurring-items: the account's items, newest first."""

    items: Annotated[list[RecurringItemView], Meta(max_length=RECURRING_ITEMS_MAX)]


class RecurringRunRequest(Struct, frozen=True, kw_only=True):
    """POST /v1/recurring-runs (operator): charge what is due now, or as of a given day when
    the service allows a manual clock (RECURRING_MANUAL_CLOCK, never in production)."""

    as_of: date | None = None


class RecurringRunView(Struct, frozen=True, kw_only=True):
    as_of: date
    planned: int
    charged: int
    refused: int
    failed: int
    suspended: int
    ended: int


# ------------------------------------------------------------------ alerts


class AlertView(Struct, frozen=True, kw_only=True):
    kind: AlertKind
    channel: Literal["email"]
    recipient: EmailAddress
    sent_at: Annotated[Timestamp, Meta(description="When the alert was queued for sending")]
    source_event_id: str | None = None


class AlertsPage(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}/alerts: newest first."""

    items: Annotated[list[AlertView], Meta(max_length=ALERTS_PAGE_MAX)]


class NotificationSettings(Struct, frozen=True, kw_only=True):
    """PUT /v1/accounts/{id}/notification-settings: which alerts are emailed, and to whom
    besides the billing profile's email."""

    balance_low: bool = True
    renewal_past_due: bool = True
    renewal_suspended: bool = True
    invoice_overdue: bool = True
    billing_email: Annotated[EmailAddress | None, Meta(
        description="Used when the billing profile has no email of its own")] = None
    extra_recipients: Annotated[list[EmailAddress], Meta(max_length=RECIPIENTS_EXTRA_MAX)] = []


class NotificationSettingsView(NotificationSettings, frozen=True, kw_only=True):
    account_id: AccountId
    stored: Annotated[bool, Meta(description="False: the defaults, nothing saved yet")]
