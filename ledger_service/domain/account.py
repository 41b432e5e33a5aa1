"""The billing account: one event-sourced aggregate per customer account.

Commands check, then record; an event's apply only applies what the event says (grants
consumed, overdraft, hold outcome, restorations), so replay never re-decides anything.
Every command takes `now` explicitly; the model reads no clock and does no I/O.

State is JSON primitives only (ints, strs, bools, None, dicts with str keys, lists) so the
default transcoder snapshots it, and it stays small: open holds, grants with something left,
settings, price overrides, refunded totals of refunded entries, and a bounded memory of
recently captured holds. No per-line history.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, cast
from uuid import UUID

from eventsourcing.domain import Aggregate

from contracts.ids import KEY_LENGTH_MAX
from contracts.money import AMOUNT_MICROS_MAX, CURRENCIES
from ledger_service.domain.chain import GENESIS_HASH, compute_chain_hash
from ledger_service.domain.checks import (
    MEMO_LENGTH_MAX,
    MEMO_LENGTH_MIN,
    PRODUCT_LENGTH_MAX,
    REFERENCE_LENGTH_MAX,
    TEXT_LENGTH_MAX,
    USAGE_LINES_PER_COMMAND_MAX,
    check_amount,
    check_choice,
    check_credit_limit,
    check_key,
    check_name,
    check_non_negative,
    check_now,
    check_provider,
    check_tax,
    check_text,
    is_int,
)
from ledger_service.domain.errors import (
    AccountClosed,
    CreditLimitExceeded,
    CurrencyMismatch,
    DuplicateKey,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
    InvalidMemo,
    InvalidRequest,
    InvalidTransition,
    LedgerError,
    RefundExceedsDebit,
)
from ledger_service.domain.fees import FeeCharge, check_fee
from ledger_service.domain.grants import (
    GRANTABLE_KINDS,
    PAID_KINDS,
    TRIAL_LOCKED_KINDS,
    TRIAL_PROMO_KINDS,
    GrantState,
    Spender,
    allocate_refund,
    due_for_expiry,
    expiry_account,
    in_consumption_order,
    plan_restoration,
    spendable_for,
)
from ledger_service.domain.naming import hashed_name, stored_as
from ledger_service.domain.payloads import (
    AccountType,
    AdjustmentDirection,
    BillingBasis,
    Currency,
    ExpiredGrant,
    ExpiredHold,
    FeeLineRecord,
    GrantExpiryReason,
    GrantKind,
    GrantUse,
    PaymentPurpose,
    Posting,
    RefundableKind,
    ReleasedHold,
    Restoration,
    SettingsChanges,
    TaxPayload,
    Tier,
    UsageLineRecord,
)
from ledger_service.domain.postings import (
    ADJUSTMENTS,
    CASH_MANUAL,
    EXPENSE_PROMOTION,
    REVENUE_RECURRING,
    REVENUE_USAGE,
    cash_account,
    customer_available,
    customer_held,
    entry_id_for,
    postings_of,
)
from ledger_service.domain.pricing import TIERS, PriceCatalog, resolve_unit_price
from ledger_service.domain.times import check_aware, format_time
from ledger_service.domain.usage import UsageBatch
from ledger_service.domain.values import (
    ACCOUNT_TYPES,
    BILLING_BASES,
    AccountSettings,
    DebitRef,
    EntryResult,
    GrantView,
    HoldResult,
    HoldView,
    RefundResult,
    TaxProfile,
    UsageLine,
    UsageResult,
)

# Hold ids are the message identity: a second billable usage for a captured hold is not billed.
# Remembering every capture would grow state forever, so the account remembers the most
# recent ones; older duplicates are the app layer's to catch (processed event ids).
CAPTURED_HOLDS_REMEMBERED: Final = 256
# Fee charge keys remembered by the account (a duplicate is refused by the model too); the
# app's idempotency rows are the complete record, this is the second guard.
FEE_KEYS_REMEMBERED: Final = 256
# Fees of one FeesCharged event: POST /v1/charges carries at most 500 fees in all.
FEES_PER_COMMAND_MAX: Final = 1_000
SETTINGS_CHANGEABLE: Final = frozenset(
    {"credit_limit_micros", "low_balance_threshold_micros", "billing_basis", "tier", "tax",
     "name"})


class BillingAccount(Aggregate):
    """A customer's billing account: balance, grants, holds, settings and prices."""

    if TYPE_CHECKING:  # attributes set by event applies; no class annotations at run time,
        # because eventsourcing would turn annotations into constructor fields.
        _account_type: AccountType
        _name: str | None
        _currency: Currency
        _tier: Tier
        _credit_limit_micros: int
        _low_balance_threshold_micros: int
        _billing_basis: BillingBasis
        _tax: TaxPayload
        _closed: bool
        _closed_at: datetime | None
        _balance_micros: int
        _held_micros: int
        _deficit_micros: int
        _grants: dict[str, GrantState]
        _grant_seq: int
        _holds: dict[str, dict[str, Any]]
        _captured_holds: dict[str, int]  # an insertion-ordered set: JSON has no sets
        _price_overrides: dict[str, int]
        _refunded: dict[str, int]
        _low_balance_armed: bool
        _overdrawn: bool
        _fee_keys: dict[str, int]  # an insertion-ordered set of recent fee charge keys
        _chain_hash: str

    # ------------------------------------------------------------------ events

    class Event(Aggregate.Event):
        chain_hash: str

        def apply(self, aggregate: Any) -> None:
            account = cast("BillingAccount", aggregate)
            self.apply_to(account)
            account._chain_hash = self.chain_hash
            account._rearm_signals()

        def apply_to(self, account: "BillingAccount") -> None:
            """What this event changes; the base class keeps the chain and signal flags."""

    @stored_as("ledger.account.Opened")
    class Opened(Event, Aggregate.Created):
        # Version 2 records who opened the account, as every other operator command records
        # its actor; version 1 did not (upcast_v1_v2).
        class_version = 2
        account_type: AccountType
        currency: Currency
        tier: Tier
        credit_limit_micros: int
        low_balance_threshold_micros: int
        billing_basis: BillingBasis
        tax: TaxPayload
        actor: str | None  # None: opened before version 2, by someone the log does not say
        name: str | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["actor"] = None

        def apply_to(self, account: "BillingAccount") -> None:
            account._name = self.name
            account._account_type = self.account_type
            account._currency = self.currency
            account._tier = self.tier
            account._credit_limit_micros = self.credit_limit_micros
            account._low_balance_threshold_micros = self.low_balance_threshold_micros
            account._billing_basis = self.billing_basis
            account._tax = self.tax.copy()
            account._closed = False
            account._closed_at = None
            account._balance_micros = 0
            account._held_micros = 0
            account._deficit_micros = 0
            account._grants = {}
            account._grant_seq = 0
            account._holds = {}
            account._captured_holds = {}
            account._price_overrides = {}
            account._refunded = {}
            account._low_balance_armed = False
            account._overdrawn = False
            account._fee_keys = {}

    @stored_as("ledger.account.TypeChanged")
    class TypeChanged(Event):
        from_type: AccountType
        to_type: AccountType
        credit_limit_micros: int
        actor: str

        def apply_to(self, account: "BillingAccount") -> None:
            account._account_type = self.to_type
            account._credit_limit_micros = self.credit_limit_micros

    @stored_as("ledger.account.SettingsChanged")
    class SettingsChanged(Event):
        # Only the settings that changed, by name (SETTINGS_CHANGEABLE).
        changes: SettingsChanges
        actor: str

        def apply_to(self, account: "BillingAccount") -> None:
            for name, value in self.changes.items():
                # a stored event names attributes: never let one name an arbitrary attribute
                if name not in SETTINGS_CHANGEABLE:
                    raise ValueError(f"SettingsChanged names unknown setting {name!r}")
                setattr(account, f"_{name}", dict(value) if isinstance(value, dict) else value)

    @stored_as("ledger.account.PriceOverrideSet")
    class PriceOverrideSet(Event):
        product: str
        unit_price_micros: int
        currency: Currency
        actor: str

        def apply_to(self, account: "BillingAccount") -> None:
            account._price_overrides[self.product] = self.unit_price_micros

    @stored_as("ledger.account.PriceOverrideCleared")
    class PriceOverrideCleared(Event):
        product: str
        actor: str

        def apply_to(self, account: "BillingAccount") -> None:
            account._price_overrides.pop(self.product, None)

    @stored_as("ledger.account.CreditPurchased")
    class CreditPurchased(Event):
        entry_id: str
        payment_id: str
        provider: str
        grant_id: str
        amount_micros: int
        deficit_covered_micros: int
        reference: str | None
        balance_after_micros: int
        postings: list[Posting]
        # "invoice": settles a postpay invoice (covers the deficit). Absent from events stored
        # before purposes existed: the class default applies (a field with a default needs no
        # upcaster, see docs/design.md "Event versions").
        purpose: PaymentPurpose = "topup"

        def apply_to(self, account: "BillingAccount") -> None:
            account._credit(self.grant_id, "purchased", None, self.amount_micros,
                            self.deficit_covered_micros)

    @stored_as("ledger.account.CreditGranted")
    class CreditGranted(Event):
        entry_id: str
        grant_id: str
        kind: GrantKind
        amount_micros: int
        expires_at: str | None
        deficit_covered_micros: int
        reason: str
        actor: str
        balance_after_micros: int
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            account._credit(self.grant_id, self.kind, self.expires_at, self.amount_micros,
                            self.deficit_covered_micros)

    @stored_as("ledger.account.UsageRecorded")
    class UsageRecorded(Event):
        # One event per account per intake batch; each line is its own statement entry.
        lines: list[UsageLineRecord]
        balance_after_micros: int

        def apply_to(self, account: "BillingAccount") -> None:
            for line in self.lines:
                account._consume(line["grants_consumed"], line["overdraft_micros"],
                                 line["amount_micros"])
                outcome = line["hold_outcome"]
                if outcome is not None:
                    hold_id = cast(str, line["hold_id"])  # a line with an outcome had a hold
                    account._holds.pop(hold_id)
                    account._held_micros -= line["held_micros"]
                    if outcome == "captured":
                        account._remember_capture(hold_id)

    @stored_as("ledger.account.HoldPlaced")
    class HoldPlaced(Event):
        entry_id: str
        hold_id: str
        request_id: str
        product: str
        quantity: int
        unit_price_micros: int
        amount_micros: int
        expires_at: str
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            account._holds[self.hold_id] = {
                "amount_micros": self.amount_micros, "expires_at": self.expires_at,
                "product": self.product, "quantity": self.quantity,
            }
            account._held_micros += self.amount_micros

    @stored_as("ledger.account.HoldReleased")
    class HoldReleased(Event):
        entry_id: str
        hold_id: str
        amount_micros: int
        reason: str
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            account._holds.pop(self.hold_id)
            account._held_micros -= self.amount_micros

    @stored_as("ledger.account.HoldsExpired")
    class HoldsExpired(Event):
        entry_id: str
        holds: list[ExpiredHold]
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            for hold in self.holds:
                account._holds.pop(hold["hold_id"])
                account._held_micros -= hold["amount_micros"]

    @stored_as("ledger.account.GrantsExpired")
    class GrantsExpired(Event):
        entry_id: str
        reason: GrantExpiryReason
        grants: list[ExpiredGrant]
        balance_after_micros: int
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            for grant in self.grants:
                del account._grants[grant["grant_id"]]
                account._balance_micros -= grant["amount_micros"]

    @stored_as("ledger.account.Refunded")
    class Refunded(Event):
        entry_id: str
        refund_id: str
        refunded_entry_id: str
        debit_kind: RefundableKind
        amount_micros: int
        restorations: list[Restoration]
        reason: str
        actor: str
        balance_after_micros: int
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            refunded = account._refunded
            refunded[self.refunded_entry_id] = (
                refunded.get(self.refunded_entry_id, 0) + self.amount_micros)
            for r in self.restorations:
                if r["effect"] != "expired":
                    account._credit(r["grant_id"], r["kind"], r["expires_at"],
                                    r["amount_micros"], r["deficit_covered_micros"])

    @stored_as("ledger.account.Adjusted")
    class Adjusted(Event):
        entry_id: str
        adjustment_id: str
        direction: AdjustmentDirection
        amount_micros: int
        memo: str
        actor: str
        grant_id: str | None  # credit: the adjustment grant
        deficit_covered_micros: int
        grants_consumed: list[GrantUse]  # debit
        overdraft_micros: int
        balance_after_micros: int
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            if self.direction == "credit":
                account._credit(cast(str, self.grant_id), "adjustment", None,
                                self.amount_micros, self.deficit_covered_micros)
            else:
                account._consume(self.grants_consumed, self.overdraft_micros,
                                 self.amount_micros)

    @stored_as("ledger.account.PaymentReversed")
    class PaymentReversed(Event):
        entry_id: str
        payment_id: str
        provider: str
        amount_micros: int
        grants_consumed: list[GrantUse]
        overdraft_micros: int
        reason: str
        balance_after_micros: int
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            account._consume(self.grants_consumed, self.overdraft_micros, self.amount_micros)

    @stored_as("ledger.account.FeeCharged")
    class FeeCharged(Event):
        # A recurring or one-off fee (a number's monthly rental, a keyword's setup), priced
        # by the app from the catalogue or the account's override and frozen here.
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

        def apply_to(self, account: "BillingAccount") -> None:
            account._consume(self.grants_consumed, self.overdraft_micros, self.amount_micros)
            account._remember_fee(self.charge_key)

    @stored_as("ledger.account.FeesCharged")
    class FeesCharged(Event):
        # One event per account per batch of fees (POST /v1/charges): each line is what a
        # FeeCharged event holds and stays its own statement entry, entry_posted message and
        # invoice line; one stored row, one chain link and one load's worth of replay for the
        # batch instead of one per fee (docs/recurring.md, "Speed").
        lines: list[FeeLineRecord]
        balance_after_micros: int

        def apply_to(self, account: "BillingAccount") -> None:
            for line in self.lines:
                account._consume(line["grants_consumed"], line["overdraft_micros"],
                                 line["amount_micros"])
                account._remember_fee(line["charge_key"])

    @stored_as("ledger.account.BalanceLow")
    class BalanceLow(Event):
        available_micros: int
        threshold_micros: int

        def apply_to(self, account: "BillingAccount") -> None:
            account._low_balance_armed = False

    # Renamed from AccountOverdrawn (every other event of the account is named without
    # "Account"); its stored name stays, so the log, the chain and the code that reads kinds
    # (naming.event_name) see no change.
    @stored_as("ledger.account.AccountOverdrawn")
    class Overdrawn(Event):
        available_micros: int
        floor_micros: int

        def apply_to(self, account: "BillingAccount") -> None:
            account._overdrawn = True

    @stored_as("ledger.account.Closed")
    class Closed(Event):
        entry_id: str
        reason: str
        actor: str
        released_holds: list[ReleasedHold]
        postings: list[Posting]

        def apply_to(self, account: "BillingAccount") -> None:
            account._closed = True
            account._closed_at = self.timestamp
            for hold in self.released_holds:
                account._holds.pop(hold["hold_id"])
                account._held_micros -= hold["amount_micros"]

    # ------------------------------------------------------------ state moves

    def _credit(self, grant_id: str, kind: GrantKind, expires_at: str | None, amount_micros: int,
                deficit_covered_micros: int) -> None:
        self._balance_micros += amount_micros
        self._deficit_micros -= deficit_covered_micros
        rest = amount_micros - deficit_covered_micros
        if rest <= 0:
            return
        grant = self._grants.get(grant_id)
        if grant is not None:
            grant["remaining_micros"] += rest
            return
        self._grant_seq += 1
        self._grants[grant_id] = {"kind": kind, "remaining_micros": rest,
                                  "granted_micros": amount_micros,
                                  "expires_at": expires_at, "seq": self._grant_seq}

    def _consume(self, consumed: Sequence[GrantUse], overdraft_micros: int,
                 amount_micros: int) -> None:
        grants = self._grants
        for part in consumed:
            grant = grants[part["grant_id"]]
            grant["remaining_micros"] -= part["amount_micros"]
            if grant["remaining_micros"] == 0:
                del grants[part["grant_id"]]
        self._deficit_micros += overdraft_micros
        self._balance_micros -= amount_micros

    def _remember_capture(self, hold_id: str) -> None:
        captured = self._captured_holds
        captured[hold_id] = 1
        while len(captured) > CAPTURED_HOLDS_REMEMBERED:
            del captured[next(iter(captured))]

    def _remember_fee(self, charge_key: str) -> None:
        # Accounts opened before fees existed have no memory of them yet (snapshots).
        fees: dict[str, int] | None = getattr(self, "_fee_keys", None)
        if fees is None:
            fees = self._fee_keys = {}
        fees[charge_key] = 1
        while len(fees) > FEE_KEYS_REMEMBERED:
            del fees[next(iter(fees))]

    def was_fee_charged(self, charge_key: str) -> bool:
        return charge_key in (getattr(self, "_fee_keys", None) or {})

    @property
    def spendable_micros(self) -> int:
        """What can still be authorized before the floor: available for prepay and trial,
        available + credit limit for postpay. The low-balance threshold compares with this,
        so a postpay account is warned as it nears its limit, not on its first debit."""
        floor = self.floor_micros
        return self.available_micros - (floor or 0)

    def _rearm_signals(self) -> None:
        if self.spendable_micros >= self._low_balance_threshold_micros:
            self._low_balance_armed = True
        available = self.available_micros
        floor = self.floor_micros
        if floor is None or available >= floor:
            self._overdrawn = False

    def _record(self, event_class: type["BillingAccount.Event"], now: datetime,
                **payload: Any) -> None:
        chain_hash = compute_chain_hash(self._chain_hash, hashed_name(event_class),
                                        self.version + 1, now, payload)
        self.trigger_event(event_class, timestamp=now, chain_hash=chain_hash, **payload)

    def _entry_id(self, kind: str, key: str) -> str:
        return entry_id_for(self.id, kind, key)

    # ---------------------------------------------------------------- queries

    @property
    def account_type(self) -> str:
        return self._account_type

    @property
    def name(self) -> str | None:
        return getattr(self, "_name", None)

    @property
    def currency(self) -> str:
        return self._currency

    @property
    def tier(self) -> str:
        return self._tier

    @property
    def billing_basis(self) -> str:
        return self._billing_basis

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def closed_at(self) -> datetime | None:
        """When the account was closed. A snapshot taken before the aggregate kept this lacks
        it (None here); the app reads the Closed event's time then (accounts.closed_at_of)."""
        return getattr(self, "_closed_at", None)

    @property
    def chain_hash(self) -> str:
        return self._chain_hash

    @property
    def balance_micros(self) -> int:
        """available + held: the sum of the customer's postings."""
        return self._balance_micros

    @property
    def held_micros(self) -> int:
        return self._held_micros

    @property
    def deficit_micros(self) -> int:
        """Debits no grant covered: what later credits cover first."""
        return self._deficit_micros

    @property
    def locked_micros(self) -> int:
        """Credit the account holds but may not spend yet: purchased credit on a trial."""
        if self._account_type != "trial":
            return 0
        return sum(g["remaining_micros"] for g in self._grants.values()
                   if g["kind"] in TRIAL_LOCKED_KINDS)

    @property
    def available_micros(self) -> int:
        """balance - held - locked; for every type but trial, balance - held."""
        return self._balance_micros - self._held_micros - self.locked_micros

    @property
    def floor_micros(self) -> int | None:
        """Lowest available an authorization may leave; None: no floor (system accounts)."""
        if self._account_type == "postpay":
            return -self._credit_limit_micros
        if self._account_type == "system":
            return None
        return 0

    @property
    def settings(self) -> AccountSettings:
        return AccountSettings(
            account_type=self._account_type, currency=self._currency, tier=self._tier,
            credit_limit_micros=self._credit_limit_micros,
            low_balance_threshold_micros=self._low_balance_threshold_micros,
            billing_basis=self._billing_basis, tax=TaxProfile.from_payload(self._tax),
            closed=self._closed,
        )

    @property
    def grants(self) -> list[GrantView]:
        """Grants with something remaining, in the order debits consume them."""
        return [GrantView(gid, g["kind"], g["remaining_micros"], g["expires_at"],
                          cast(int, g.get("granted_micros", g["remaining_micros"])))
                for gid, g in in_consumption_order(self._grants)]

    @property
    def open_holds(self) -> list[HoldView]:
        return [HoldView(hid, h["amount_micros"], h["expires_at"], h["product"], h["quantity"])
                for hid, h in self._holds.items()]

    @property
    def price_overrides(self) -> dict[str, int]:
        return dict(self._price_overrides)

    @property
    def low_balance_armed(self) -> bool:
        return self._low_balance_armed

    @property
    def is_overdrawn(self) -> bool:
        return self._overdrawn

    def refunded_micros(self, entry_id: str) -> int:
        return self._refunded.get(entry_id, 0)

    def was_captured(self, hold_id: str) -> bool:
        return hold_id in self._captured_holds

    def unit_price_for(self, product: str, catalog: PriceCatalog) -> int:
        """The account's price for one unit: its override, else the catalogue's for its tier
        and currency. Raises UnknownProduct."""
        return resolve_unit_price(product, self._tier, self._currency, self._price_overrides,
                                  catalog)

    def check_invariants(self) -> None:
        """Raise AssertionError if the state contradicts itself (tests and `verify` call it)."""
        remaining = [g["remaining_micros"] for g in self._grants.values()]
        if any(r <= 0 for r in remaining):
            raise AssertionError(f"grant without remainder in state: {self._grants}")
        if self._deficit_micros < 0:
            raise AssertionError(f"negative deficit {self._deficit_micros}")
        if sum(remaining) - self._deficit_micros != self._balance_micros:
            raise AssertionError(
                f"grants {sum(remaining)} - deficit {self._deficit_micros}"
                f" != balance {self._balance_micros}")
        holds = [h["amount_micros"] for h in self._holds.values()]
        if any(a < 0 for a in holds) or sum(holds) != self._held_micros:
            raise AssertionError(f"holds {sum(holds)} != held {self._held_micros}")

    # --------------------------------------------------------------- commands

    @classmethod
    def open(
        cls,
        account_id: UUID,
        now: datetime,
        *,
        account_type: str,
        currency: str = "GBP",
        tier: str = "starter",
        credit_limit_micros: int = 0,
        low_balance_threshold_micros: int = 0,
        billing_basis: str = "submitted",
        tax: TaxProfile | None = None,
        name: str | None = None,
        actor: str = "",
    ) -> "BillingAccount":
        now = check_now(now)
        if not isinstance(account_id, UUID):
            raise InvalidRequest("account_id must be a UUID")
        payload = {
            "account_type": check_choice(account_type, "account_type", ACCOUNT_TYPES),
            "currency": check_choice(currency, "currency", CURRENCIES),
            "tier": check_choice(tier, "tier", TIERS),
            "credit_limit_micros": check_credit_limit(account_type, credit_limit_micros),
            "low_balance_threshold_micros": check_non_negative(
                low_balance_threshold_micros, "low_balance_threshold_micros"),
            "billing_basis": check_choice(billing_basis, "billing_basis", BILLING_BASES),
            "tax": check_tax(tax if tax is not None else TaxProfile()).to_payload(),
            "name": check_name(name),
            "actor": check_text(actor, "actor"),
        }
        chain_hash = compute_chain_hash(GENESIS_HASH, hashed_name(cls.Opened), cls.INITIAL_VERSION,
                                        now, payload)
        return cls._create(cls.Opened, id=account_id, timestamp=now, chain_hash=chain_hash,
                           **payload)

    def change_type(self, to_type: str, now: datetime, *,
                    credit_limit_micros: int | None = None, actor: str = "") -> bool:
        """Convert the account. Trial -> prepay/postpay expires the trial's promotional grants
        in one GrantsExpired event. Returns False (nothing recorded) if already that type."""
        now = check_now(now)
        check_choice(to_type, "account_type", ACCOUNT_TYPES)
        check_text(actor, "actor")
        if self._closed:
            raise AccountClosed("a closed account keeps its type")
        from_type = self._account_type
        if to_type == "trial" and from_type != "trial":
            raise InvalidTransition("an account never converts back to trial")
        if "system" in (from_type, to_type) and from_type != to_type:
            raise InvalidTransition("system accounts neither convert nor are converted to")
        if to_type == "postpay":
            limit = self._credit_limit_micros if credit_limit_micros is None else \
                credit_limit_micros
        else:
            limit = 0 if credit_limit_micros is None else credit_limit_micros
        check_credit_limit(to_type, limit)
        if to_type == from_type:
            if limit == self._credit_limit_micros:
                return False
            return self.change_settings(now, credit_limit_micros=limit, actor=actor)
        self._record(self.TypeChanged, now, from_type=from_type, to_type=to_type,
                     credit_limit_micros=limit, actor=actor)
        if from_type == "trial":
            promos = [(gid, g) for gid, g in self._grants.items()
                      if g["kind"] in TRIAL_PROMO_KINDS]
            self._expire(promos, "trial_converted", now)
        self._signal(now)
        return True

    def change_settings(
        self,
        now: datetime,
        *,
        credit_limit_micros: int | None = None,
        low_balance_threshold_micros: int | None = None,
        billing_basis: str | None = None,
        tier: str | None = None,
        tax: TaxProfile | None = None,
        name: str | None = None,
        actor: str = "",
    ) -> bool:
        """Change any of the settings; None leaves one as it is. Returns False (nothing
        recorded) if nothing changes. The currency never changes."""
        now = check_now(now)
        check_text(actor, "actor")
        wanted: dict[str, Any] = {}
        if credit_limit_micros is not None:
            wanted["credit_limit_micros"] = check_credit_limit(self._account_type,
                                                                credit_limit_micros)
        if low_balance_threshold_micros is not None:
            wanted["low_balance_threshold_micros"] = check_non_negative(
                low_balance_threshold_micros, "low_balance_threshold_micros")
        if billing_basis is not None:
            wanted["billing_basis"] = check_choice(billing_basis, "billing_basis",
                                                    BILLING_BASES)
        if tier is not None:
            wanted["tier"] = check_choice(tier, "tier", TIERS)
        if tax is not None:
            wanted["tax"] = check_tax(tax).to_payload()
        if name is not None:
            wanted["name"] = check_name(name)
        changes = {k: v for k, v in wanted.items() if getattr(self, f"_{k}", None) != v}
        if not changes:
            return False
        self._record(self.SettingsChanged, now, changes=changes, actor=actor)
        self._signal(now)
        return True

    def set_price_override(self, product: str, unit_price_micros: int, now: datetime, *,
                           actor: str = "") -> bool:
        """Per-account unit price in the account's currency; wins over the catalogue."""
        now = check_now(now)
        check_text(product, "product", PRODUCT_LENGTH_MAX)
        if not product:
            raise InvalidRequest("product must not be empty")
        check_non_negative(unit_price_micros, "unit_price_micros")
        check_text(actor, "actor")
        if self._price_overrides.get(product) == unit_price_micros:
            return False
        self._record(self.PriceOverrideSet, now, product=product,
                     unit_price_micros=unit_price_micros, currency=self._currency, actor=actor)
        return True

    def clear_price_override(self, product: str, now: datetime, *, actor: str = "") -> bool:
        now = check_now(now)
        check_text(actor, "actor")
        if product not in self._price_overrides:
            return False
        self._record(self.PriceOverrideCleared, now, product=product, actor=actor)
        return True

    def purchase_credit(self, payment_id: str, provider: str, amount_micros: int,
                        currency: str, now: datetime, *,
                        reference: str | None = None, purpose: str = "topup") -> EntryResult:
        """Credit from a payment (net of VAT): a `purchased` grant, deficit covered first."""
        now = check_now(now)
        check_key(payment_id, "payment_id")
        check_provider(provider)
        check_amount(amount_micros)
        if currency != self._currency:
            raise CurrencyMismatch(f"payment in {currency}, account in {self._currency}")
        if reference is not None:
            check_text(reference, "reference", REFERENCE_LENGTH_MAX)
        grant_id = f"payment:{provider}:{payment_id}"
        if grant_id in self._grants:
            raise DuplicateKey(f"payment {provider}/{payment_id} already credited")
        entry_id = self._entry_id("payment", f"{provider}:{payment_id}")
        covered = min(amount_micros, self._deficit_micros)
        self._record(
            self.CreditPurchased, now, entry_id=entry_id, payment_id=payment_id,
            provider=provider, purpose=check_choice(purpose, "purpose", ("topup", "invoice")),
            grant_id=grant_id, amount_micros=amount_micros,
            deficit_covered_micros=covered, reference=reference,
            balance_after_micros=self._balance_micros + amount_micros,
            postings=postings_of([(customer_available(self.id), amount_micros),
                                  (cash_account(provider), -amount_micros)], self._currency),
        )
        self._signal(now)
        return self._entry_result(entry_id, amount_micros)

    def grant(self, grant_id: str, kind: str, amount_micros: int, now: datetime, *,
              expires_at: datetime | None = None, reason: str = "",
              actor: str = "") -> EntryResult:
        """Grant credit of one of the grantable kinds (promotional, or purchased without a
        provider payment), optionally expiring."""
        now = check_now(now)
        check_key(grant_id, "grant_id")
        check_choice(kind, "kind", GRANTABLE_KINDS)
        check_amount(amount_micros)
        check_text(reason, "reason")
        check_text(actor, "actor")
        expires_text = None
        if expires_at is not None:
            if check_aware(expires_at, "expires_at") <= now:
                raise InvalidRequest("expires_at must be after now")
            expires_text = format_time(expires_at)
        if grant_id in self._grants:
            raise DuplicateKey(f"grant {grant_id} exists")
        source = CASH_MANUAL if kind == "purchased" else EXPENSE_PROMOTION
        entry_id = self._entry_id("grant", grant_id)
        self._record(
            self.CreditGranted, now, entry_id=entry_id, grant_id=grant_id, kind=kind,
            amount_micros=amount_micros, expires_at=expires_text,
            deficit_covered_micros=min(amount_micros, self._deficit_micros),
            reason=reason, actor=actor,
            balance_after_micros=self._balance_micros + amount_micros,
            postings=postings_of([(customer_available(self.id), amount_micros),
                                  (source, -amount_micros)], self._currency),
        )
        self._signal(now)
        return self._entry_result(entry_id, amount_micros)

    def authorize(self, hold_id: str, request_id: str, product: str, quantity: int,
                  unit_price_micros: int, expires_at: datetime, now: datetime) -> HoldResult:
        """Reserve unit_price * quantity for a message about to be sent.

        Approved only if available - amount stays at or above the floor (0 for prepay and
        trial, minus the credit limit for postpay, none for system accounts, whose holds are
        of zero: they are not billed). Grants past their expiry are expired first, in the same
        command, so they never fund a hold.
        """
        now = check_now(now)
        check_key(hold_id, "hold_id")
        check_key(request_id, "request_id")
        check_text(product, "product", PRODUCT_LENGTH_MAX)
        if not product:
            raise InvalidRequest("product must not be empty")
        if not is_int(quantity) or quantity <= 0:
            raise InvalidRequest("quantity must be a positive integer")
        check_non_negative(unit_price_micros, "unit_price_micros")
        if check_aware(expires_at, "expires_at") <= now:
            raise InvalidRequest("expires_at must be after now")
        amount = unit_price_micros * quantity
        if amount > AMOUNT_MICROS_MAX:
            raise InvalidAmount("hold amount beyond the amount limit")
        if self._closed:
            raise AccountClosed("account is closed")
        if hold_id in self._holds or hold_id in self._captured_holds:
            raise DuplicateKey(f"hold {hold_id} exists")
        if self._account_type == "system":
            amount = unit_price_micros = 0
        due = due_for_expiry(self._grants, format_time(now))
        floor = self.floor_micros
        if floor is not None:
            self._check_floor(self._available_after_expiry(due) - amount, floor, amount)
        self._expire(due, "expired", now)
        expires_text = format_time(expires_at)
        self._record(
            self.HoldPlaced, now, entry_id=self._entry_id("hold", hold_id), hold_id=hold_id,
            request_id=request_id, product=product, quantity=quantity,
            unit_price_micros=unit_price_micros, amount_micros=amount, expires_at=expires_text,
            postings=self._hold_postings(-amount),
        )
        self._signal(now)
        return HoldResult(hold_id, amount, expires_text, self.available_micros)

    def release_hold(self, hold_id: str, now: datetime, *, reason: str = "released") -> int:
        """Give a hold's amount back to available; returns the amount released."""
        now = check_now(now)
        check_text(reason, "reason")
        hold = self._holds.get(hold_id)
        if hold is None:
            raise HoldNotFound(f"no open hold {hold_id!r}")
        amount = hold["amount_micros"]
        self._record(self.HoldReleased, now, entry_id=self._entry_id("hold_released", hold_id),
                     hold_id=hold_id, amount_micros=amount, reason=reason,
                     postings=self._hold_postings(amount))
        self._signal(now)
        return cast(int, amount)

    def expire_holds(self, now: datetime) -> tuple[str, ...]:
        """Expire every hold whose expiry has passed, in one event; none due: no event."""
        now = check_now(now)
        now_text = format_time(now)
        # product and quantity travel with the expiry so hold_expired can say what it was for
        due = [{"hold_id": hid, "amount_micros": h["amount_micros"],
                "expires_at": h["expires_at"], "product": h["product"],
                "quantity": h["quantity"]}
               for hid, h in self._holds.items() if h["expires_at"] <= now_text]
        if not due:
            return ()
        total = sum(h["amount_micros"] for h in due)
        self._record(self.HoldsExpired, now,
                     entry_id=self._entry_id("holds_expired", str(self.version + 1)),
                     holds=due, postings=self._hold_postings(total))
        self._signal(now)
        return tuple(h["hold_id"] for h in due)

    def expire_grants(self, now: datetime) -> tuple[str, ...]:
        """Expire every grant past its expiry, in one event; none due: no event."""
        now = check_now(now)
        expired = self._expire(due_for_expiry(self._grants, format_time(now)), "expired", now)
        if expired:
            self._signal(now)
        return expired

    def record_usage(self, lines: Sequence[UsageLine], now: datetime) -> UsageResult:
        """Apply one intake batch of this account's usage lines as ONE UsageRecorded event.

        Per line, by status and the account's billing basis:
        - the basis status bills unit_price * quantity, capturing the line's hold if it is
          open (the hold is released and the actual amount debited), else billing without
          one (the message was sent) even past the floor;
        - `failed` releases the line's open hold and bills nothing;
        - any other status, or a hold already captured, records nothing for that line.
        Lines the model cannot read are "rejected" (the app dead-letters them); the rest of
        the batch still applies. Only billed and released lines are stored.
        """
        now = check_now(now)
        if len(lines) > USAGE_LINES_PER_COMMAND_MAX:
            raise InvalidRequest(f"at most {USAGE_LINES_PER_COMMAND_MAX} lines per batch")
        if self._closed:
            raise AccountClosed("account is closed")
        expired = self._expire(due_for_expiry(self._grants, format_time(now)), "expired", now)
        batch = UsageBatch(self.id, self._account_type, self._billing_basis, self._currency,
                           self._balance_micros, self._grants, self._holds,
                           self._captured_holds)
        outcomes = [batch.add(line) for line in lines]
        if batch.stored_lines:
            self._record(self.UsageRecorded, now, lines=batch.stored_lines,
                         balance_after_micros=batch.balance_micros)
        low, overdrawn = self._signal(now)
        return UsageResult(
            lines=tuple(outcomes), recorded=bool(batch.stored_lines),
            balance_after_micros=self._balance_micros,
            available_after_micros=self.available_micros, balance_low=low,
            overdrawn=overdrawn, grants_expired=expired,
        )

    def refund(self, refund_id: str, entry: DebitRef, amount_micros: int | None, reason: str,
               actor: str, now: datetime) -> RefundResult:
        """Refund (part of) an earlier debit; amount None refunds what is left of it.

        Never more than was debited across all refunds of the entry (RefundExceedsDebit);
        refunding an entry that is fully refunded records nothing and says so (no_op).
        """
        now = check_now(now)
        check_key(refund_id, "refund_id")
        check_text(reason, "reason")
        check_text(actor, "actor")
        self._check_debit_ref(entry)
        if amount_micros is not None:
            check_amount(amount_micros)
        already = self._refunded.get(entry.entry_id, 0)
        refundable = entry.amount_micros - already
        if refundable <= 0:
            return RefundResult(refund_id, entry.entry_id, 0, 0, no_op=True)
        amount = refundable if amount_micros is None else amount_micros
        if amount > refundable:
            raise RefundExceedsDebit(
                f"refund of {amount} exceeds the {refundable} left of entry {entry.entry_id}")
        refund_grant_id = f"refund:{refund_id}"
        if refund_grant_id in self._grants:
            raise DuplicateKey(f"refund {refund_id} exists")
        self._expire(due_for_expiry(self._grants, format_time(now)), "expired", now)
        overdraft_share, grant_shares = allocate_refund(
            entry.grants_consumed, entry.overdraft_micros, already, amount)
        restorations = plan_restoration(self._grants, self._deficit_micros, overdraft_share,
                                        grant_shares, format_time(now), refund_grant_id)
        expired_legs = [(expiry_account(r["kind"]), r["amount_micros"])
                        for r in restorations if r["effect"] == "expired"]
        to_customer = amount - sum(leg for _, leg in expired_legs)
        contra = REVENUE_USAGE if entry.kind == "usage" else ADJUSTMENTS
        entry_id = self._entry_id("refund", refund_id)
        self._record(
            self.Refunded, now, entry_id=entry_id, refund_id=refund_id,
            refunded_entry_id=entry.entry_id, debit_kind=entry.kind, amount_micros=amount,
            restorations=restorations, reason=reason, actor=actor,
            balance_after_micros=self._balance_micros + to_customer,
            postings=postings_of([(customer_available(self.id), to_customer),
                                  (contra, -amount), *expired_legs], self._currency),
        )
        self._signal(now)
        return RefundResult(refund_id, entry.entry_id, amount, refundable - amount, no_op=False,
                            entry_id=entry_id, restorations=tuple(restorations))

    def adjust(self, adjustment_id: str, direction: str, amount_micros: int, memo: str,
               actor: str, now: datetime) -> EntryResult:
        """An operator's correction, memo 10-500 characters, actor recorded.

        A credit becomes a grant of kind `adjustment` (spent with purchased credit, last;
        deficit covered first). A debit consumes grants like usage and may overdraw: it is an
        operator's decision, allowed on a closed account too (to settle it).
        """
        now = check_now(now)
        check_key(adjustment_id, "adjustment_id")
        if direction not in ("credit", "debit"):
            raise InvalidRequest(f"direction must be credit or debit, got {direction!r}")
        check_amount(amount_micros)
        if not isinstance(memo, str) or not (
                len(memo.strip()) >= MEMO_LENGTH_MIN and len(memo) <= MEMO_LENGTH_MAX):
            raise InvalidMemo(f"memo must be {MEMO_LENGTH_MIN}-{MEMO_LENGTH_MAX} characters")
        if not isinstance(actor, str) or not actor.strip() or len(actor) > TEXT_LENGTH_MAX:
            raise InvalidRequest("an adjustment needs the actor who made it")
        entry_id = self._entry_id("adjustment", adjustment_id)
        grant_id = f"adjustment:{adjustment_id}"
        customer = customer_available(self.id)
        if direction == "credit":
            if grant_id in self._grants:
                raise DuplicateKey(f"adjustment {adjustment_id} exists")
            self._record(
                self.Adjusted, now, entry_id=entry_id, adjustment_id=adjustment_id,
                direction=direction, amount_micros=amount_micros, memo=memo, actor=actor,
                grant_id=grant_id,
                deficit_covered_micros=min(amount_micros, self._deficit_micros),
                grants_consumed=[], overdraft_micros=0,
                balance_after_micros=self._balance_micros + amount_micros,
                postings=postings_of([(customer, amount_micros), (ADJUSTMENTS, -amount_micros)],
                                     self._currency),
            )
            self._signal(now)
            return self._entry_result(entry_id, amount_micros)
        self._expire(due_for_expiry(self._grants, format_time(now)), "expired", now)
        consumed, overdraft = Spender(self._grants, spendable_for(self._account_type)).take(
            amount_micros)
        self._record(
            self.Adjusted, now, entry_id=entry_id, adjustment_id=adjustment_id,
            direction=direction, amount_micros=amount_micros, memo=memo, actor=actor,
            grant_id=None, deficit_covered_micros=0, grants_consumed=consumed,
            overdraft_micros=overdraft, balance_after_micros=self._balance_micros - amount_micros,
            postings=postings_of([(customer, -amount_micros), (ADJUSTMENTS, amount_micros)],
                                 self._currency),
        )
        self._signal(now)
        return self._entry_result(entry_id, -amount_micros)

    def charge_fee(self, fee: FeeCharge, now: datetime) -> EntryResult:
        """Charge a recurring or one-off fee: unit price x quantity, prorated by days.

        Prepay and trial accounts are charged only if available (after grants due to expire
        have expired) covers it: else InsufficientFunds and nothing is recorded. Postpay
        accounts are always charged, past the credit limit too (as usage is: the number was
        kept), and system accounts are not billed (refused). One charge per charge key.
        """
        now = check_now(now)
        check_fee(fee)
        if self._closed:
            raise AccountClosed("account is closed")
        if self._account_type == "system":
            raise InvalidRequest("system accounts are not billed")
        if self.was_fee_charged(fee.charge_key):
            raise DuplicateKey(f"fee {fee.charge_key} already charged")
        amount = fee.amount_micros
        due = due_for_expiry(self._grants, format_time(now))
        if self._account_type in ("prepay", "trial"):
            available_after = self._available_after_expiry(due) - amount
            if available_after < 0:
                raise InsufficientFunds(
                    f"a fee of {amount} would take available to {available_after}, below 0")
        self._expire(due, "expired", now)
        consumed, overdraft = Spender(self._grants, spendable_for(self._account_type)).take(
            amount)
        entry_id = self._entry_id("fee", fee.charge_key)
        self._record(
            self.FeeCharged, now, entry_id=entry_id, charge_key=fee.charge_key,
            product=fee.product, quantity=fee.quantity, unit_price_micros=fee.unit_price_micros,
            days=fee.days, days_in_period=fee.days_in_period, amount_micros=amount,
            reference=fee.reference, period=fee.period, description=fee.description,
            grants_consumed=consumed, overdraft_micros=overdraft,
            balance_after_micros=self._balance_micros - amount,
            postings=postings_of([(customer_available(self.id), -amount),
                                  (REVENUE_RECURRING, amount)], self._currency),
        )
        self._signal(now)
        return self._entry_result(entry_id, -amount)

    def charge_fees(self, fees: Sequence[FeeCharge],
                    now: datetime) -> list[EntryResult | LedgerError]:
        """Charge a batch of fees as ONE FeesCharged event, each fee as `charge_fee` would
        have charged it on its own, in order: one outcome per fee, an EntryResult or the
        error that refused it (InsufficientFunds, DuplicateKey, InvalidRequest, ...). A fee
        refused records nothing and does not stop the others; grants due to expire expire
        once, before the first fee charged. Nothing charged: nothing recorded.

        The balance-low and overdrawn signals are checked once, after the batch (one fee at
        a time they fired after the fee that crossed, with that fee's available).
        """
        now = check_now(now)
        if len(fees) > FEES_PER_COMMAND_MAX:
            raise InvalidRequest(f"at most {FEES_PER_COMMAND_MAX} fees per batch")
        due = due_for_expiry(self._grants, format_time(now))
        prepaid = self._account_type in ("prepay", "trial")
        available = self._available_after_expiry(due)
        outcomes: list[EntryResult | LedgerError | None] = []
        accepted: list[tuple[int, FeeCharge, int]] = []
        keys: set[str] = set()
        for index, fee in enumerate(fees):
            try:  # in charge_fee's order of checks
                check_fee(fee)
                if self._closed:
                    raise AccountClosed("account is closed")
                if self._account_type == "system":
                    raise InvalidRequest("system accounts are not billed")
                if fee.charge_key in keys or self.was_fee_charged(fee.charge_key):
                    raise DuplicateKey(f"fee {fee.charge_key} already charged")
                amount = fee.amount_micros
                if prepaid and available - amount < 0:
                    raise InsufficientFunds(f"a fee of {amount} would take available to"
                                            f" {available - amount}, below 0")
            except LedgerError as exc:
                outcomes.append(exc)
                continue
            available -= amount
            keys.add(fee.charge_key)
            outcomes.append(None)
            accepted.append((index, fee, amount))
        if not accepted:
            return cast("list[EntryResult | LedgerError]", outcomes)
        self._expire(due, "expired", now)
        spender = Spender(self._grants, spendable_for(self._account_type))
        customer = customer_available(self.id)
        balance = self._balance_micros
        lines: list[FeeLineRecord] = []
        for _, fee, amount in accepted:
            consumed, overdraft = spender.take(amount)
            balance -= amount
            lines.append({
                "entry_id": self._entry_id("fee", fee.charge_key),
                "charge_key": fee.charge_key, "product": fee.product,
                "quantity": fee.quantity, "unit_price_micros": fee.unit_price_micros,
                "days": fee.days, "days_in_period": fee.days_in_period,
                "amount_micros": amount, "reference": fee.reference, "period": fee.period,
                "description": fee.description, "grants_consumed": consumed,
                "overdraft_micros": overdraft, "balance_after_micros": balance,
                "postings": postings_of([(customer, -amount), (REVENUE_RECURRING, amount)],
                                        self._currency),
            })
        self._record(self.FeesCharged, now, lines=lines, balance_after_micros=balance)
        self._signal(now)
        # Each fee's balance and available right after it (later fees of the batch not yet).
        later = sum(amount for _, _, amount in accepted)
        for (index, _, amount), line in zip(accepted, lines, strict=True):
            later -= amount
            outcomes[index] = EntryResult(line["entry_id"], -amount,
                                          line["balance_after_micros"],
                                          self.available_micros + later)
        return cast("list[EntryResult | LedgerError]", outcomes)

    def reverse_payment(self, payment_id: str, provider: str, amount_micros: int,
                        now: datetime, *, reason: str = "") -> EntryResult:
        """A provider refunded (part of) a payment to the customer: take the credit back.

        Takes from that payment's grant first, then other paid credit (purchased,
        adjustment, refund kinds), never promotional credit; the rest is overdraft, since
        the money has already left.
        """
        now = check_now(now)
        check_key(payment_id, "payment_id")
        check_provider(provider)
        check_amount(amount_micros)
        check_text(reason, "reason")
        self._expire(due_for_expiry(self._grants, format_time(now)), "expired", now)
        spender = Spender(self._grants, lambda kind: kind in PAID_KINDS,
                          first=f"payment:{provider}:{payment_id}")
        consumed, overdraft = spender.take(amount_micros)
        entry_id = self._entry_id("payment_reversed", f"{provider}:{payment_id}:"
                                  f"{self.version + 1}")
        self._record(
            self.PaymentReversed, now, entry_id=entry_id, payment_id=payment_id,
            provider=provider, amount_micros=amount_micros, grants_consumed=consumed,
            overdraft_micros=overdraft, reason=reason,
            balance_after_micros=self._balance_micros - amount_micros,
            postings=postings_of([(customer_available(self.id), -amount_micros),
                                  (cash_account(provider), amount_micros)], self._currency),
        )
        self._signal(now)
        return self._entry_result(entry_id, -amount_micros)

    def close(self, now: datetime, *, reason: str = "", actor: str = "") -> bool:
        """Stop new debits and authorizations; open holds are released. Credits, refunds
        and adjustments still apply, so a closed account can be settled. Returns False if
        already closed."""
        now = check_now(now)
        check_text(reason, "reason")
        check_text(actor, "actor")
        if self._closed:
            return False
        released = [{"hold_id": hid, "amount_micros": h["amount_micros"]}
                    for hid, h in self._holds.items()]
        self._record(self.Closed, now, entry_id=self._entry_id("closed", ""), reason=reason,
                     actor=actor, released_holds=released,
                     postings=self._hold_postings(sum(h["amount_micros"] for h in released)))
        self._signal(now)
        return True

    # --------------------------------------------------------------- helpers

    def _entry_result(self, entry_id: str, amount_micros: int) -> EntryResult:
        return EntryResult(entry_id, amount_micros, self._balance_micros, self.available_micros)

    def _hold_postings(self, to_available_micros: int) -> list[Posting]:
        """Postings moving an amount from held to available (negative: the other way)."""
        return postings_of([(customer_held(self.id), -to_available_micros),
                            (customer_available(self.id), to_available_micros)],
                           self._currency)

    def _available_after_expiry(self, due: list[tuple[str, GrantState]]) -> int:
        spendable = spendable_for(self._account_type)
        return self.available_micros - sum(g["remaining_micros"] for _, g in due
                                           if spendable(g["kind"]))

    def _check_floor(self, available_after: int, floor: int, amount: int) -> None:
        if available_after >= floor:
            return
        if self._account_type == "postpay":
            raise CreditLimitExceeded(
                f"a hold of {amount} would take available to {available_after},"
                f" below the credit limit floor {floor}")
        raise InsufficientFunds(
            f"a hold of {amount} would take available to {available_after}, below {floor}")

    def _expire(self, grants: list[tuple[str, GrantState]], reason: str,
                now: datetime) -> tuple[str, ...]:
        if not grants:
            return ()
        expired = [{"grant_id": gid, "kind": g["kind"], "amount_micros": g["remaining_micros"],
                    "expires_at": g["expires_at"]} for gid, g in grants]
        total = sum(g["amount_micros"] for g in expired)
        legs = [(customer_available(self.id), -total)]
        legs += [(expiry_account(g["kind"]), g["amount_micros"]) for g in expired]
        self._record(self.GrantsExpired, now,
                     entry_id=self._entry_id("grants_expired", str(self.version + 1)),
                     reason=reason, grants=expired,
                     balance_after_micros=self._balance_micros - total,
                     postings=postings_of(legs, self._currency))
        return tuple(g["grant_id"] for g in expired)

    def _signal(self, now: datetime) -> tuple[bool, bool]:
        """Record BalanceLow / Overdrawn if the command left available below the
        threshold / floor and the signal is armed (re-armed by the event that brings
        available back up, see _rearm_signals)."""
        available = self.available_micros
        low = overdrawn = False
        threshold = self._low_balance_threshold_micros
        if threshold > 0 and self._low_balance_armed and self.spendable_micros < threshold:
            self._record(self.BalanceLow, now, available_micros=available,
                         threshold_micros=threshold)
            low = True
        floor = self.floor_micros
        if floor is not None and not self._overdrawn and available < floor:
            self._record(self.Overdrawn, now, available_micros=available,
                         floor_micros=floor)
            overdrawn = True
        return low, overdrawn

    def _check_debit_ref(self, entry: DebitRef) -> None:
        if not isinstance(entry, DebitRef):
            raise InvalidRequest("entry must be a DebitRef")
        check_text(entry.entry_id, "entry_id", KEY_LENGTH_MAX)
        check_amount(entry.amount_micros, "entry amount_micros")
        if entry.kind not in ("usage", "adjustment"):
            raise InvalidRequest(f"cannot refund a {entry.kind!r} entry")
        parts = sum(p["amount_micros"] for p in entry.grants_consumed)
        if parts + entry.overdraft_micros != entry.amount_micros or entry.overdraft_micros < 0:
            raise InvalidRequest("entry's grants consumed and overdraft do not add up")


def debit_refs_of(event: Any) -> list[DebitRef]:
    """The refundable debits an event recorded: billed usage lines and debit adjustments."""
    if isinstance(event, BillingAccount.UsageRecorded):
        return [DebitRef.from_usage_line(line) for line in event.lines
                if line["amount_micros"] > 0]
    if isinstance(event, BillingAccount.Adjusted) and event.direction == "debit":
        return [DebitRef(entry_id=event.entry_id, amount_micros=event.amount_micros,
                         grants_consumed=tuple(event.grants_consumed),
                         overdraft_micros=event.overdraft_micros,
                         occurred_at=format_time(event.timestamp), kind="adjustment")]
    return []
