"""Bodies of ledger_service: accounts, balances, statements, usage, credits, prices, audit."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from contracts.catalog import Tier
from contracts.http.paging import NextCursor
from contracts.ids import AccountId, EntryId, GrantId, Key, ProductKey, Reference
from contracts.ledger import EntryAmount, EntryKind, GrantKind
from contracts.money import Amount, Currency, PositiveAmount, SignedAmount
from contracts.text import Text, text_meta
from contracts.timestamps import Timestamp

ENTRIES_PAGE_MAX: Final = 500
AUDIT_PAGE_MAX: Final = 500
USAGE_ITEMS_MAX: Final = 10_000
CREDITS_MAX: Final = 1_000

# trial: promotional credits only; prepay: the balance must cover authorizations; postpay:
# usage accrues against a credit limit and is invoiced monthly; system: internal, not billed.
AccountType = Literal["trial", "prepay", "postpay", "system"]
AccountStatus = Literal["open", "closed"]
BillingBasis = Literal["submitted", "delivered"]

CountryCode = Annotated[
    str, Meta(pattern=r"^[A-Z]{2}$(?!\n)", description="ISO 3166-1 alpha-2", examples=["GB"])
]
VatNumber = Annotated[
    str,
    Meta(
        min_length=2,
        max_length=32,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 .-]*$(?!\n)",
        description="VAT registration number as the customer gave it; checked by the ledger",
        examples=["GB123456789"],
    ),
]
AccountName = Annotated[str, text_meta(min_length=1, max_length=200)]
Reason = Annotated[str, text_meta(min_length=1, max_length=500)]
CreditLimit = Annotated[Amount, Meta(description="How far a postpay account may go below zero")]
LowBalanceThreshold = Annotated[
    Amount, Meta(description="balance_low is published when available crosses below it")
]
UsagePeriod = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?$(?!\n)",
        description="YYYY-MM-DD when grouped by day, YYYY-MM when grouped by month",
        examples=["2026-11-22", "2026-11"],
    ),
]
# The chain's link: "<key id>:" + HMAC-SHA256 hex (keyed), or a bare SHA-256 hex for events
# hashed before the chain was keyed (docs/design.md, "Tamper evidence").
Sha256 = Annotated[str, Meta(
    pattern=r"^([A-Za-z0-9_-]{1,32}:)?[0-9a-f]{64}$(?!\n)",
    description="The hash chain link: `<key id>:` + HMAC-SHA256 hex, or SHA-256 hex (unkeyed,"
                " events from before keying)", examples=["k2026:" + "0" * 64])]


class Tax(Struct, frozen=True, kw_only=True):
    country: CountryCode
    vat_number: VatNumber | None = None
    reverse_charge: Annotated[
        bool | None, Meta(description="Absent: decided from country and vat_number")
    ] = None


class OpenAccount(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts."""

    account_id: Annotated[
        AccountId | None, Meta(description="Absent: the ledger assigns one")
    ] = None
    type: AccountType
    currency: Currency
    credit_limit: CreditLimit | None = None
    low_balance_threshold: LowBalanceThreshold | None = None
    billing_basis: Annotated[
        BillingBasis | None, Meta(description="Which usage status bills; absent: the default")
    ] = None
    tier: Tier | None = None
    tax: Tax
    name: AccountName | None = None


class PatchAccount(Struct, frozen=True, kw_only=True):
    """PATCH /v1/accounts/{id}: an absent field is unchanged; null clears an optional one."""

    type: AccountType | UnsetType = UNSET
    credit_limit: CreditLimit | UnsetType | None = UNSET
    low_balance_threshold: LowBalanceThreshold | UnsetType | None = UNSET
    billing_basis: BillingBasis | UnsetType = UNSET
    tier: Tier | UnsetType | None = UNSET
    tax: Annotated[Tax | UnsetType, Meta(description="Replaces the whole tax block")] = UNSET
    name: AccountName | UnsetType | None = UNSET


class AccountView(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}: settings and state."""

    account_id: AccountId
    name: AccountName | None
    type: AccountType
    status: AccountStatus
    currency: Currency
    credit_limit: CreditLimit | None
    low_balance_threshold: LowBalanceThreshold | None
    billing_basis: BillingBasis
    tier: Tier | None
    tax: Tax
    opened_at: Timestamp
    closed_at: Timestamp | None = None


class CreditView(Struct, frozen=True, kw_only=True):
    grant_id: GrantId
    kind: GrantKind
    amount: Annotated[Amount, Meta(description="Granted")]
    remaining: Amount
    expires_at: Annotated[Timestamp | None, Meta(description="Null: never expires")]


class BalanceView(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}/balance: available = balance - held (+ credit_limit)."""

    account_id: AccountId
    currency: Currency
    balance: SignedAmount
    available: SignedAmount
    held: Annotated[Amount, Meta(description="Reserved by open holds")]
    credits: Annotated[
        list[CreditView],
        Meta(max_length=CREDITS_MAX, description="Unexpired grants with a remainder"),
    ]
    credit_limit: CreditLimit | None
    as_of: Timestamp


class EntryView(Struct, frozen=True, kw_only=True):
    entry_id: EntryId
    kind: EntryKind
    amount: EntryAmount
    balance_after: SignedAmount
    description: Text
    reference: Reference | None
    occurred_at: Timestamp


class EntriesPage(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}/entries: newest first."""

    items: Annotated[list[EntryView], Meta(max_length=ENTRIES_PAGE_MAX)]
    next_cursor: NextCursor


class UsageItem(Struct, frozen=True, kw_only=True):
    period: UsagePeriod
    product: ProductKey
    quantity: Annotated[int, Meta(ge=0, le=10**15)]
    amount: Annotated[Amount, Meta(description="Charged, excluding VAT")]


class UsageView(Struct, frozen=True, kw_only=True):
    """GET /v1/accounts/{id}/usage."""

    currency: Currency
    group_by: Literal["day", "month"]
    items: Annotated[list[UsageItem], Meta(max_length=USAGE_ITEMS_MAX)]


class GrantCredit(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts/{id}/credits."""

    kind: GrantKind
    amount: PositiveAmount
    expires_at: Annotated[Timestamp | None, Meta(description="Absent: never expires")] = None
    reason: Reason


class GrantView(Struct, frozen=True, kw_only=True):
    """The answer to GrantCredit."""

    grant_id: GrantId
    entry_id: EntryId
    account_id: AccountId
    kind: GrantKind
    amount: PositiveAmount
    currency: Currency
    expires_at: Timestamp | None
    granted_at: Timestamp


class Adjustment(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts/{id}/adjustments; the actor is taken from the token."""

    direction: Literal["credit", "debit"]
    amount: PositiveAmount
    memo: Annotated[
        str, text_meta(min_length=10, max_length=500, description="Why, for the auditor")
    ]
    reference: Reference | None = None


class RefundRequest(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts/{id}/refunds: (part of) a debit back; never more than was debited."""

    entry_id: Annotated[EntryId, Meta(description="The debit being refunded")]
    amount: Annotated[
        PositiveAmount | None, Meta(description="Absent: all that is left of the debit")
    ] = None
    reason: Reason


class PostedView(Struct, frozen=True, kw_only=True):
    """The answer to an adjustment or a refund: the entry it posted."""

    entry_id: EntryId
    account_id: AccountId
    kind: EntryKind
    amount: EntryAmount
    currency: Currency
    balance_after: SignedAmount
    occurred_at: Timestamp


class PriceOverride(Struct, frozen=True, kw_only=True):
    """PUT /v1/accounts/{id}/prices/{product}: wins over the catalogue; account currency."""

    unit_price: Annotated[Amount, Meta(description="Per unit, excluding VAT")]
    valid_until: Annotated[
        Timestamp | None, Meta(description="Absent: until replaced or removed")
    ] = None
    reason: Reason | None = None


class PriceOverrideView(Struct, frozen=True, kw_only=True):
    account_id: AccountId
    product: ProductKey
    unit_price: Amount
    currency: Currency
    valid_until: Timestamp | None
    set_at: Timestamp


FeePeriod = Annotated[
    str,
    Meta(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$(?!\n)", description="Calendar month, YYYY-MM",
         examples=["2026-12"]),
]


class FeeProration(Struct, frozen=True, kw_only=True):
    """Charge days / days_in_period of the period's price (rounded half up to a micro-unit)."""

    days: Annotated[int, Meta(ge=1, le=31)]
    days_in_period: Annotated[int, Meta(ge=28, le=31)]


class ChargeFee(Struct, frozen=True, kw_only=True):
    """POST /v1/accounts/{id}/charges: a recurring or one-off fee, priced by the ledger from
    the catalogue or the account's override. One charge per charge_key, ever."""

    charge_key: Annotated[Key, Meta(description="recurring:<item_id>:<YYYY-MM or setup>",
                                    examples=["recurring:0b6f...:2026-12"])]
    product: ProductKey
    quantity: Annotated[int, Meta(ge=1, le=1_000_000)]
    reference: Annotated[Reference | None, Meta(description="The number or keyword")] = None
    period: Annotated[FeePeriod | None, Meta(description="Absent for a setup fee")] = None
    proration: Annotated[FeeProration | None, Meta(description="Absent: charged whole")] = None
    description: Annotated[str, Meta(max_length=500)] | None = None


class FeeView(Struct, frozen=True, kw_only=True):
    """The fee the ledger charged: the entry it posted, with the price frozen in it."""

    entry_id: EntryId
    account_id: AccountId
    charge_key: Key
    kind: EntryKind
    product: ProductKey
    quantity: int
    unit_price: Amount
    amount: Annotated[Amount, Meta(description="What was charged (the entry debits it)")]
    currency: Currency
    reference: Reference | None = None
    period: FeePeriod | None = None
    proration: FeeProration | None = None
    balance_after: SignedAmount
    occurred_at: Timestamp


CHARGES_PER_BATCH_MAX: Final = 500


class AccountFee(ChargeFee, frozen=True, kw_only=True):
    """One fee of a batch: ChargeFee and the account it is for."""

    account_id: AccountId


class ChargeFees(Struct, frozen=True, kw_only=True):
    """POST /v1/charges (operator): many accounts' fees in one transaction of the ledger.
    Each fee is charged once per charge_key, as by POST /v1/accounts/{id}/charges."""

    charges: Annotated[list[AccountFee], Meta(min_length=1, max_length=CHARGES_PER_BATCH_MAX)]


class FeeOutcome(Struct, frozen=True, kw_only=True):
    charge_key: Key
    account_id: AccountId
    outcome: Annotated[Literal["charged", "refused", "rejected"], Meta(
        description="refused: insufficient funds, nothing written; rejected: never (unknown"
                    " account or product, closed account, malformed)")]
    fee: FeeView | None = None
    problem_type: Annotated[str, Meta(max_length=100)] | None = None
    status: Annotated[int, Meta(ge=400, le=599)] | None = None
    detail: Annotated[str, Meta(max_length=500)] | None = None


class FeeOutcomes(Struct, frozen=True, kw_only=True):
    """The answer to POST /v1/charges: one outcome per fee, in the order sent."""

    results: Annotated[list[FeeOutcome], Meta(max_length=CHARGES_PER_BATCH_MAX)]


class AuditEvent(Struct, frozen=True, kw_only=True):
    """One stored event of the account as recorded, with its link in the hash chain."""

    position: Annotated[int, Meta(ge=1, le=2**63 - 1, description="Version in the log")]
    topic: Annotated[str, Meta(min_length=1, max_length=256, description="Event type")]
    recorded_at: Timestamp
    data: Annotated[dict[str, Any], Meta(max_length=256, description="The event's state")]
    hash: Sha256
    previous_hash: Annotated[Sha256 | None, Meta(description="Null for the first event")]


class AuditEventsPage(Struct, frozen=True, kw_only=True):
    """GET /v1/audit/accounts/{id}/events: oldest first."""

    items: Annotated[list[AuditEvent], Meta(max_length=AUDIT_PAGE_MAX)]
    next_cursor: NextCursor
