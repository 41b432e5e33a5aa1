"""payments.v1.*: money arriving from, returning to, or failing at a payment provider.

Amounts exclude VAT: `amount` is what the account is credited (or loses on a refund) and
`vat_amount` is the VAT collected with it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from contracts.ids import AccountId, EventId, InvoiceId, PaymentId, RefundId
from contracts.money import Amount, Currency
from contracts.text import Text, text_meta
from contracts.timestamps import Timestamp

PaymentProvider = Literal["stripe", "hubspot", "manual", "xero"]
PaymentPurpose = Literal["topup", "invoice"]

ProviderReference = Annotated[
    str,
    text_meta(
        min_length=1,
        max_length=256,
        description="The provider's id for it (Stripe checkout session, refund, ...)",
        examples=["cs_test_a1b2c3"],
    ),
]
NetAmount = Annotated[Amount, Meta(description="Excluding VAT")]
InvoiceRef = Annotated[InvoiceId | None, Meta(description="Set when purpose is invoice")]
_Text = Text
_Code = Annotated[str, text_meta(max_length=128)]


def _require_invoice(purpose: PaymentPurpose, invoice_id: str | None) -> None:
    # An invoice payment that names no invoice cannot be allocated by anyone downstream.
    if purpose == "invoice" and invoice_id is None:
        raise ValueError("a payment with purpose invoice names its invoice_id")


class PaymentReceived(Struct, frozen=True, kw_only=True):
    """A payment succeeded. Nats-Msg-Id: `payment_id`."""

    payment_id: PaymentId
    provider: PaymentProvider
    provider_reference: ProviderReference
    account_id: AccountId
    purpose: PaymentPurpose
    amount: Annotated[Amount, Meta(description="Credited to the account, excluding VAT")]
    vat_amount: Amount
    currency: Currency
    invoice_id: InvoiceRef = None
    received_at: Timestamp

    def __post_init__(self) -> None:
        _require_invoice(self.purpose, self.invoice_id)


class PaymentRefunded(Struct, frozen=True, kw_only=True):
    """(Part of) a received payment went back to the payer."""

    event_id: EventId
    refund_id: RefundId
    payment_id: PaymentId
    provider: PaymentProvider
    provider_reference: ProviderReference
    account_id: AccountId
    purpose: PaymentPurpose
    amount: Annotated[Amount, Meta(description="Taken back from the account, excluding VAT")]
    vat_amount: Amount
    currency: Currency
    invoice_id: InvoiceRef = None
    reason: _Text | None = None
    refunded_at: Timestamp

    def __post_init__(self) -> None:
        _require_invoice(self.purpose, self.invoice_id)


class PaymentFailed(Struct, frozen=True, kw_only=True):
    """A payment attempt failed; nothing was credited."""

    event_id: EventId
    payment_id: PaymentId
    provider: PaymentProvider
    provider_reference: ProviderReference
    account_id: AccountId
    purpose: PaymentPurpose
    amount: NetAmount
    vat_amount: Amount
    currency: Currency
    invoice_id: InvoiceRef = None
    failure_code: Annotated[
        _Code | None, Meta(description="The provider's code, e.g. card_declined")
    ] = None
    failure_message: _Text | None = None
    failed_at: Timestamp

    def __post_init__(self) -> None:
        _require_invoice(self.purpose, self.invoice_id)
