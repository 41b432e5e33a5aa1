"""Values the commands take and return: inputs (usage lines, debit references, tax profile) and
results (what happened, per line where a command has lines).

Inputs are frozen dataclasses validated by the command that receives them. They are never
stored: the events store JSON primitives derived from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # payloads imports this module's vocabularies
    from ledger_service.domain.payloads import GrantUse, UsageLineRecord

ACCOUNT_TYPES: Final = ("trial", "prepay", "postpay", "system")
BILLING_BASES: Final = ("submitted", "delivered")
USAGE_STATUSES: Final = ("submitted", "delivered", "failed")

AccountType = Literal["trial", "prepay", "postpay", "system"]
Tier = Literal["starter", "enterprise", "bespoke"]
BillingBasis = Literal["submitted", "delivered"]
LineOutcomeKind = Literal["billed", "released", "ignored", "rejected"]


@dataclass(frozen=True, slots=True)
class TaxProfile:
    country: str = "GB"
    vat_number: str | None = None
    reverse_charge: bool = False

    def to_payload(self) -> dict[str, Any]:
        return {"country": self.country, "vat_number": self.vat_number,
                "reverse_charge": self.reverse_charge}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> TaxProfile:
        return cls(country=data["country"], vat_number=data["vat_number"],
                   reverse_charge=data["reverse_charge"])


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One rated usage message for one account, as the intake hands it to the aggregate.

    unit_price_micros is already resolved (BillingAccount.unit_price_for) so that the event
    records the price and replay never re-prices.
    """

    event_id: str
    product: str
    quantity: int
    unit_price_micros: int
    status: str
    occurred_at: datetime
    hold_id: str | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class DebitRef:
    """What the app layer found for the debit being refunded (a usage line or a debit
    adjustment), taken from the event that recorded it."""

    entry_id: str
    amount_micros: int
    grants_consumed: Sequence[GrantUse]
    overdraft_micros: int
    occurred_at: str
    kind: Literal["usage", "adjustment"] = "usage"

    @classmethod
    def from_usage_line(cls, line: UsageLineRecord) -> DebitRef:
        return cls(entry_id=line["entry_id"], amount_micros=line["amount_micros"],
                   grants_consumed=tuple(line["grants_consumed"]),
                   overdraft_micros=line["overdraft_micros"], occurred_at=line["occurred_at"])


@dataclass(frozen=True, slots=True)
class LineOutcome:
    event_id: str
    entry_id: str
    outcome: LineOutcomeKind
    # Why a line was ignored or rejected, or how a billed line treated its hold:
    # "captured_hold", "hold_not_open", "hold_already_captured", "not_billable_on_basis",
    # "status_not_billable", "failed_not_billed", "system_account", "duplicate_in_batch",
    # "invalid_quantity", "invalid_price", "invalid_key", "amount_too_large", ...
    reason: str | None = None
    amount_micros: int = 0
    overdraft_micros: int = 0


@dataclass(frozen=True, slots=True)
class UsageResult:
    lines: tuple[LineOutcome, ...]
    recorded: bool
    balance_after_micros: int
    available_after_micros: int
    balance_low: bool = False
    overdrawn: bool = False
    grants_expired: tuple[str, ...] = ()

    def outcome_of(self, event_id: str) -> LineOutcome:
        return next(line for line in self.lines if line.event_id == event_id)


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: str
    amount_micros: int
    expires_at: str
    available_after_micros: int


@dataclass(frozen=True, slots=True)
class EntryResult:
    entry_id: str
    amount_micros: int
    balance_after_micros: int
    available_after_micros: int


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund_id: str
    refunded_entry_id: str
    refunded_micros: int
    remaining_refundable_micros: int
    no_op: bool
    entry_id: str | None = None
    restorations: tuple[Mapping[str, Any], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class GrantView:
    grant_id: str
    kind: str
    remaining_micros: int
    expires_at: str | None
    granted_micros: int = 0  # what the grant was created with


@dataclass(frozen=True, slots=True)
class HoldView:
    hold_id: str
    amount_micros: int
    expires_at: str
    product: str
    quantity: int


@dataclass(frozen=True, slots=True)
class AccountSettings:
    account_type: str
    currency: str
    tier: str
    credit_limit_micros: int
    low_balance_threshold_micros: int
    billing_basis: str
    tax: TaxProfile
    closed: bool
