"""Messages of the ledger: ledger.v1.authorize (request-reply) and ledger.v1.events.*.

Signs: an entry's `amount` is positive when it credits the account (top-up, grant, refund)
and negative when it debits it (usage, expiry), so a statement is a running sum.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.catalog import Tier
from contracts.deadletter import DeadLetter as DeadLetter  # re-exported: briefs name it here
from contracts.ids import (
    AccountId,
    EntryId,
    EventId,
    GrantId,
    HoldId,
    Key,
    ProductKey,
    Reference,
)
from contracts.money import Amount, Currency, SignedAmount
from contracts.text import Text
from contracts.timestamps import Timestamp
from contracts.usage import Quantity

# A hold outliving a day is a forgotten hold; the ledger expires it and says so.
TTL_SECONDS_MAX: Final = 86_400
# One expiry sweep reports at most this many grants of an account in one event.
EXPIRED_GRANTS_MAX: Final = 1_000

AuthorizeRejection = Literal[
    "insufficient_funds",
    "credit_limit_exceeded",
    "account_not_found",
    "account_closed",
    "unknown_product",
    "invalid_request",
]

EntryKind = Literal[
    "usage",
    "topup",
    "invoice_payment",
    "grant",
    "grant_expiry",
    "adjustment",
    "refund",
    "payment_refund",
    "credit_note",
    "fee",
]

GrantKind = Literal[
    "signup_promo",
    "mobile_verification",
    "referral",
    "purchased",
    "bonus",
    "compensation",
]

TtlSeconds = Annotated[int, Meta(ge=1, le=TTL_SECONDS_MAX)]
EntryAmount = Annotated[
    SignedAmount, Meta(description="Positive credits the account, negative debits it")
]
_Text = Text


class AuthorizeRequest(Struct, frozen=True, kw_only=True):
    """Ask the ledger to hold the price of `quantity` units before sending them."""

    request_id: Annotated[Key, Meta(description="The same request_id gets the same reply")]
    account_id: AccountId
    product: ProductKey
    quantity: Quantity
    ttl_seconds: Annotated[
        TtlSeconds | None,
        Meta(description="Seconds until an uncaptured hold is released; absent: the default"),
    ] = None


class AuthorizeReply(Struct, frozen=True, kw_only=True):
    """The ledger's answer: a hold when approved, a reason when refused."""

    approved: bool
    hold_id: HoldId | None = None
    amount: Annotated[Amount | None, Meta(description="Price held")] = None
    currency: Currency | None = None
    available_after: Annotated[
        SignedAmount | None, Meta(description="Available funds once the hold is placed")
    ] = None
    expires_at: Annotated[
        Timestamp | None, Meta(description="When the hold is released unless captured")
    ] = None
    reason: Annotated[
        AuthorizeRejection | None, Meta(description="Why it was refused; only when refused")
    ] = None
    detail: Annotated[_Text | None, Meta(description="Human-readable detail of a refusal")] = None

    def __post_init__(self) -> None:
        # An approval with a reason, or a refusal without one, leaves the caller guessing.
        if self.approved and self.reason is not None:
            raise ValueError("an approved reply carries no reason")
        if not self.approved and self.reason is None:
            raise ValueError("a refused reply carries a reason")


class EntryPosted(Struct, frozen=True, kw_only=True):
    """Every money event of an account. Nats-Msg-Id: `entry_id`."""

    entry_id: EntryId
    account_id: AccountId
    kind: EntryKind
    amount: EntryAmount
    currency: Currency
    balance_after: SignedAmount
    occurred_at: Timestamp
    reference: Reference | None = None
    description: _Text | None = None
    product: Annotated[ProductKey | None, Meta(description="Usage entries")] = None
    quantity: Annotated[Quantity | None, Meta(description="Usage entries")] = None
    unit_price: Annotated[Amount | None, Meta(description="Usage entries, excl. VAT")] = None
    hold_id: Annotated[HoldId | None, Meta(description="The hold this entry captured")] = None
    grant_id: Annotated[GrantId | None, Meta(description="Grant entries")] = None


class BalanceLow(Struct, frozen=True, kw_only=True):
    """Available funds crossed below the account's threshold; once per crossing."""

    event_id: EventId
    account_id: AccountId
    currency: Currency
    balance: SignedAmount
    available: SignedAmount
    threshold: Annotated[Amount, Meta(description="The account's low_balance_threshold")]
    occurred_at: Timestamp


class AccountOverdrawn(Struct, frozen=True, kw_only=True):
    """Available funds went below zero, or past the credit limit of a postpay account."""

    event_id: EventId
    account_id: AccountId
    currency: Currency
    balance: SignedAmount
    available: SignedAmount
    credit_limit: Amount | None = None
    entry_id: Annotated[EntryId | None, Meta(description="The entry that overdrew it")] = None
    occurred_at: Timestamp


class ExpiredGrant(Struct, frozen=True, kw_only=True):
    grant_id: GrantId
    kind: GrantKind
    amount_expired: Annotated[Amount, Meta(description="What was left of the grant")]


class GrantsExpired(Struct, frozen=True, kw_only=True):
    """Credit grants of one account reached their expiry; their remainder was removed."""

    event_id: EventId
    account_id: AccountId
    currency: Currency
    grants: Annotated[list[ExpiredGrant], Meta(min_length=1, max_length=EXPIRED_GRANTS_MAX)]
    total_expired: Amount
    balance_after: SignedAmount
    occurred_at: Timestamp


class HoldExpired(Struct, frozen=True, kw_only=True):
    """A hold was not captured within its ttl and was released."""

    event_id: EventId
    hold_id: HoldId
    account_id: AccountId
    product: ProductKey
    quantity: Quantity
    amount: Annotated[Amount, Meta(description="Price that was held")]
    currency: Currency
    occurred_at: Timestamp


Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]
Base64 = Annotated[str, Meta(pattern=r"^[A-Za-z0-9+/]+={0,2}$(?!\n)", max_length=200)]


class LedgerAnchor(Struct, frozen=True, kw_only=True):
    """ledger.v1.anchors: a signed checkpoint of the whole log, kept outside the database.

    `merkle_root` is the RFC 6962 Merkle tree hash over every account's chain head at
    `position` (leaves sorted by account id; see ledger_service/anchors.py for the leaf bytes).
    `signature` is Ed25519 over the canonical text of the other fields; verify it with the
    ledger's published anchor public key, never with the `public_key` carried here alone.
    Nats-Msg-Id: `anchor_id`.
    """

    anchor_id: Annotated[str, Meta(min_length=1, max_length=64)]
    position: Annotated[int, Meta(ge=0, description="Last notification id covered")]
    accounts: Annotated[int, Meta(ge=0)]
    merkle_root: Hex64
    reason: Literal["interval", "period_close", "manual"]
    period: Annotated[str | None, Meta(description="The month closed, for period_close")] = None
    created_at: Timestamp
    public_key: Base64
    signature: Base64


class AccountTax(Struct, frozen=True, kw_only=True):
    """An account's tax profile as the ledger holds it."""

    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$(?!\n)", description="ISO 3166-1 alpha-2",
                                 examples=["GB"])]
    vat_number: Annotated[str, Meta(max_length=32)] | None = None
    reverse_charge: bool = False


class AccountUpdated(Struct, frozen=True, kw_only=True):
    """An account's full settings after it was opened, changed, converted or closed.
    Nats-Msg-Id: `event_id` (account and version); `version` orders them per account."""

    event_id: EventId
    account_id: AccountId
    version: Annotated[int, Meta(ge=1, description="The account's event version")]
    account_type: Literal["trial", "prepay", "postpay", "system"]
    currency: Currency
    tier: Tier
    billing_basis: Literal["submitted", "delivered"]
    credit_limit: Amount
    tax: AccountTax
    closed: bool
    name: Annotated[str, Meta(max_length=200)] | None = None
    occurred_at: Timestamp
