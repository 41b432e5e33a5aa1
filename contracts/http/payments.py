"""Bodies of payments_service: checkout sessions and payments."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.http.paging import NextCursor
from contracts.ids import AccountId, InvoiceId, PaymentId
from contracts.money import Amount, Currency, PositiveAmount
from contracts.payments import NetAmount, PaymentProvider, PaymentPurpose, ProviderReference
from contracts.timestamps import Timestamp

PAYMENTS_PAGE_MAX: Final = 500

PaymentStatus = Literal["pending", "succeeded", "failed", "refunded", "partially_refunded"]


class CreateTopUp(Struct, frozen=True, kw_only=True):
    """POST /v1/checkout/topups: the amount to credit, in the account's currency."""

    account_id: AccountId
    amount: Annotated[PositiveAmount, Meta(description="To credit; VAT is added on its own line")]


class CheckoutSessionView(Struct, frozen=True, kw_only=True):
    """A hosted checkout page to send the customer to."""

    session_id: Annotated[str, Meta(min_length=1, max_length=256)]
    checkout_url: Annotated[str, Meta(min_length=1, max_length=2_048, pattern=r"^https?://")]
    amount: NetAmount | None = None
    vat_amount: Amount | None = None
    currency: Currency | None = None
    expires_at: Timestamp | None = None


class PaymentView(Struct, frozen=True, kw_only=True):
    payment_id: PaymentId
    account_id: AccountId
    provider: PaymentProvider
    provider_reference: ProviderReference
    purpose: PaymentPurpose
    status: PaymentStatus
    amount: NetAmount
    vat_amount: Amount
    refunded_amount: NetAmount
    currency: Currency
    invoice_id: InvoiceId | None
    created_at: Timestamp
    received_at: Timestamp | None
    failure_message: Annotated[str, Meta(max_length=500)] | None = None


class PaymentsPage(Struct, frozen=True, kw_only=True):
    """GET /v1/payments: newest first."""

    items: Annotated[list[PaymentView], Meta(max_length=PAYMENTS_PAGE_MAX)]
    next_cursor: NextCursor
