"""The typed payloads of the ledger's stored events: the shape of every nested record and the
vocabulary of every enum-like field.

Records are `TypedDict`s and vocabularies `Literal`s, deliberately not msgspec Structs or
enums: at run time they are the plain dicts and strings the events always carried, so

- the stored JSON of every event is byte-for-byte what it was (no upcaster for the existing
  log, and the projections' SQL reads the same paths);
- the hash chain hashes the same bytes (domain/chain.py: msgspec encodes these dicts as it
  encoded the untyped ones);
- encoding costs nothing more (the library's transcoder sees dicts and strings), and decoding
  (projections/decoding.py) decodes each event class's stored state with a msgspec decoder of
  exactly these types, which validates every field (a `kind` outside `GrantKind`, a posting
  without `currency`, a string where an integer belongs are undecodable, and `ledgerctl
  verify` reports them) at the cost of the untyped decoding it replaces (bench/event_codec.py).

mypy checks every producer and consumer against these shapes. Money stays integer micro-units
(`*_micros: int`) as everywhere in the domain (docs/design.md, "Money"); times inside payloads
stay the canonical text `times.format_time` writes, which the chain hashes.

Changing any of these is changing stored events: read docs/design.md, "Event versions".
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from ledger_service.domain.values import AccountType, BillingBasis, Tier

__all__ = ["AccountType", "BillingBasis", "Tier"]  # and everything defined below

Currency = Literal["GBP", "EUR", "USD"]
GrantKind = Literal["signup_promo", "mobile_verification", "referral", "bonus", "compensation",
                    "purchased", "adjustment", "refund"]
UsageStatus = Literal["submitted", "delivered", "failed"]
HoldOutcome = Literal["captured", "released"]
AdjustmentDirection = Literal["credit", "debit"]
RefundableKind = Literal["usage", "adjustment"]
GrantExpiryReason = Literal["expired", "trial_converted"]
# Where each part of a refund went (grants.plan_restoration).
RestorationEffect = Literal["credited", "restored", "recreated", "expired"]
PaymentPurpose = Literal["topup", "invoice"]


class Posting(TypedDict):
    """One leg of a double entry; an event's postings sum to zero per currency."""

    ledger_account: str
    amount_micros: int
    currency: Currency


class GrantUse(TypedDict):
    """The part of one grant a debit consumed (kind and expiry kept for refunds)."""

    grant_id: str
    kind: GrantKind
    expires_at: str | None
    amount_micros: int


class Restoration(TypedDict):
    """Where one part of a refund went."""

    grant_id: str
    kind: GrantKind
    expires_at: str | None
    amount_micros: int
    deficit_covered_micros: int
    effect: RestorationEffect


class ExpiredGrant(TypedDict):
    grant_id: str
    kind: GrantKind
    amount_micros: int
    expires_at: str | None


class ExpiredHold(TypedDict):
    hold_id: str
    amount_micros: int
    expires_at: str
    # Carried since commit e293adb (for hold_expired); absent from holds expired before.
    product: NotRequired[str]
    quantity: NotRequired[int]


class ReleasedHold(TypedDict):
    hold_id: str
    amount_micros: int


class UsageLineRecord(TypedDict):
    """One usage line of a UsageRecorded event: its own statement entry."""

    event_id: str
    entry_id: str
    product: str
    quantity: int
    unit_price_micros: int
    amount_micros: int
    status: UsageStatus
    hold_id: str | None
    hold_outcome: HoldOutcome | None
    held_micros: int
    reference: str | None
    occurred_at: str
    grants_consumed: list[GrantUse]
    overdraft_micros: int
    balance_after_micros: int
    postings: list[Posting]


class FeeLineRecord(TypedDict):
    """One fee of a FeesCharged event: its own statement entry, as a FeeCharged event is."""

    entry_id: str
    charge_key: str
    product: str
    quantity: int
    unit_price_micros: int
    days: int | None  # proration: days charged of days_in_period; None: charged whole
    days_in_period: int | None
    amount_micros: int
    reference: str | None
    period: str | None  # YYYY-MM; None for a setup fee
    description: str
    grants_consumed: list[GrantUse]
    overdraft_micros: int
    balance_after_micros: int
    postings: list[Posting]


class TaxPayload(TypedDict):
    country: str
    vat_number: str | None
    reverse_charge: bool


class SettingsChanges(TypedDict, total=False):
    """The settings a SettingsChanged event changed, only those (each key optional)."""

    credit_limit_micros: int
    low_balance_threshold_micros: int
    billing_basis: BillingBasis
    tier: Tier
    tax: TaxPayload
    name: str | None
