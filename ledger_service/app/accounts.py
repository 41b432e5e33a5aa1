"""Operator and payment commands on one account, each idempotent.

HTTP commands carry an ``Idempotency-Key``: the first outcome is stored with a hash of the
request, in the same transaction as its events; a replay with the same body returns the
stored response and writes nothing; the same key with another body is refused.
Payments are keyed by the provider's payment or refund id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import msgspec

from contracts.http.ledger import (
    AccountFee,
    AccountView,
    Adjustment,
    BalanceView,
    ChargeFee,
    ChargeFees,
    CreditView,
    FeeOutcome,
    FeeOutcomes,
    FeeProration,
    FeeView,
    GrantCredit,
    GrantView,
    OpenAccount,
    PatchAccount,
    PostedView,
    PriceOverride,
    PriceOverrideView,
    RefundRequest,
    Tax,
)
from contracts.money import format_micros, to_micros
from contracts.payments import PaymentReceived, PaymentRefunded
from ledger_service.app.ledger import (
    AccountExists,
    AccountNotFound,
    ConflictingIdempotencyKey,
    Ledger,
    UnitOfWork,
)
from ledger_service.app.recorder import IdempotencyRow
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.errors import (
    AccountClosed,
    DuplicateKey,
    EntryNotFound,
    InsufficientFunds,
    InvalidRequest,
    LedgerError,
    UnknownProduct,
)
from ledger_service.domain.fees import FeeCharge
from ledger_service.domain.times import parse_time
from ledger_service.domain.values import DebitRef, EntryResult, TaxProfile

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Idempotency:
    """What makes an HTTP write idempotent: its scope, the caller's key, the body's hash."""

    scope: str
    key: str | None
    body_hash: str


@dataclass(frozen=True, slots=True)
class Outcome:
    response: bytes
    replayed: bool


def idempotent(
    ledger: Ledger,
    idem: Idempotency,
    account_id: UUID | None,
    command: Callable[[UnitOfWork, str], msgspec.Struct],  # _Charged: replay that
) -> Outcome:
    """Run ``command`` once per key. It receives the unit of work and a stable operation id
    (the key, or a fresh id when the caller sent none) to name what it creates."""

    def run(work: UnitOfWork) -> Outcome:
        if idem.key is not None:
            stored = ledger.stored_key(idem.scope, idem.key)
            if stored is not None:
                body_hash, response = stored
                if body_hash != idem.body_hash:
                    raise ConflictingIdempotencyKey(
                        "this Idempotency-Key was used with a different request")
                return Outcome(response or b"{}", replayed=True)
        operation_id = idem.key or uuid.uuid4().hex
        result = command(work, operation_id)
        if isinstance(result, _Charged):
            return Outcome(result.response, replayed=True)
        response = _encoder.encode(result)
        if idem.key is not None:
            work.rows.keys.append(IdempotencyRow(idem.scope, idem.key, account_id,
                                                 idem.body_hash, response))
        return Outcome(response, replayed=False)

    return ledger.run(run)


# ------------------------------------------------------------------ views


def tax_profile(tax: Tax) -> TaxProfile:
    return TaxProfile(country=tax.country, vat_number=tax.vat_number,
                      reverse_charge=bool(tax.reverse_charge))


def account_view(account: BillingAccount, closed_at: datetime | None = None) -> AccountView:
    """`closed_at` for an account loaded from a snapshot older than the field (closed_at_of)."""
    settings = account.settings
    tax = settings.tax
    return AccountView(
        account_id=account.id,
        name=account.name,
        type=settings.account_type,  # type: ignore[arg-type]
        status="closed" if settings.closed else "open",
        currency=settings.currency,  # type: ignore[arg-type]
        credit_limit=format_micros(settings.credit_limit_micros)
        if settings.account_type == "postpay" else None,
        low_balance_threshold=format_micros(settings.low_balance_threshold_micros)
        if settings.low_balance_threshold_micros else None,
        billing_basis=settings.billing_basis,  # type: ignore[arg-type]
        tier=settings.tier,  # type: ignore[arg-type]
        tax=Tax(country=tax.country, vat_number=tax.vat_number,
                reverse_charge=tax.reverse_charge),
        opened_at=account.created_on,
        closed_at=account.closed_at or closed_at,
    )


def closed_at_of(ledger: Ledger, account: BillingAccount) -> datetime | None:
    """When the account was closed: its own state, or, where it was loaded from a snapshot
    taken before the aggregate kept the time, the timestamp of its Closed event (found
    through the entry index, which names every event's kind)."""
    if not account.is_closed or account.closed_at is not None:
        return account.closed_at
    rows = ledger.query("SELECT originator_version FROM {schema}.entry_index"
                        " WHERE account_id = %s AND kind = 'Closed'", (account.id,))
    if not rows:
        return None
    version = int(rows[0][0])
    for event in ledger.app.events.get(account.id, gt=version - 1, lte=version):
        return event.timestamp  # type: ignore[attr-defined]
    return None


def read_account(ledger: Ledger, account_id: UUID) -> AccountView:
    account = ledger.read(account_id)
    return account_view(account, closed_at_of(ledger, account))


def balance_view(account: BillingAccount, as_of: datetime) -> BalanceView:
    settings = account.settings
    return balance_view_of(
        account.id, account.currency, settings.account_type, account.balance_micros,
        account.available_micros, account.held_micros, settings.credit_limit_micros,
        [(g.grant_id, g.kind, g.granted_micros, g.remaining_micros, g.expires_at)
         for g in account.grants],
        as_of)


# (grant_id, kind, granted_micros, remaining_micros, expires_at as stored or None)
GrantFigures = tuple[str, str, int, int, str | None]


def balance_view_of(account_id: UUID, currency: str, account_type: str, balance_micros: int,
                    available_micros: int, held_micros: int, credit_limit_micros: int,
                    grants: Iterable[GrantFigures], as_of: datetime) -> BalanceView:
    """The balance as the API shows it, from an account's figures: the aggregate's, or the
    balances projection's row, which holds the same figures (projections/builders.py)."""
    return BalanceView(
        account_id=account_id,
        currency=currency,  # type: ignore[arg-type]
        balance=format_micros(balance_micros),
        available=format_micros(available_micros),
        held=format_micros(held_micros),
        credits=[
            CreditView(
                grant_id=grant_id,
                kind=kind if kind in _CONTRACT_GRANT_KINDS else "purchased",  # type: ignore[arg-type]
                amount=format_micros(granted),
                remaining=format_micros(remaining),
                expires_at=parse_time(expires_at) if expires_at else None,
            )
            for grant_id, kind, granted, remaining, expires_at in grants
        ],
        credit_limit=format_micros(credit_limit_micros) if account_type == "postpay" else None,
        as_of=as_of,
    )


_CONTRACT_GRANT_KINDS = frozenset(
    {"signup_promo", "mobile_verification", "referral", "purchased", "bonus", "compensation"})


def posted_view(account: BillingAccount, entry_id: str, kind: str, amount_micros: int,
                balance_after_micros: int, at: datetime) -> PostedView:
    return PostedView(
        entry_id=entry_id, account_id=account.id, kind=kind,  # type: ignore[arg-type]
        amount=format_micros(amount_micros), currency=account.currency,  # type: ignore[arg-type]
        balance_after=format_micros(balance_after_micros), occurred_at=at,
    )


# ------------------------------------------------------------------ commands


def open_account(ledger: Ledger, body: OpenAccount, idem: Idempotency,
                 actor: str = "", new_id: Callable[[], UUID] = uuid.uuid4) -> Outcome:
    """`new_id` makes the id when the client gave none: with several databases, one whose
    partition is in this process's database (ledger_service/databases.py)."""
    account_id = body.account_id or new_id()

    def command(work: UnitOfWork, _: str) -> AccountView:
        try:
            ledger.load(account_id)
        except AccountNotFound:
            pass
        else:
            raise AccountExists(f"account {account_id} already exists")
        account = BillingAccount.open(
            account_id, ledger.clock(),
            account_type=body.type, currency=body.currency, tier=body.tier or "starter",
            credit_limit_micros=to_micros(body.credit_limit) if body.credit_limit else 0,
            low_balance_threshold_micros=to_micros(body.low_balance_threshold)
            if body.low_balance_threshold else 0,
            billing_basis=body.billing_basis or "submitted",
            tax=tax_profile(body.tax),
            name=body.name,
            actor=actor,
        )
        work.touch(account)
        return account_view(account)

    return idempotent(ledger, idem, account_id, command)


def patch_account(ledger: Ledger, account_id: UUID, body: PatchAccount, actor: str,
                  idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, _: str) -> AccountView:
        account = work.touch(ledger.load(account_id))
        now = ledger.clock()
        limit = _optional_micros(body.credit_limit)
        if body.type is not msgspec.UNSET and body.type != account.account_type:
            account.change_type(body.type, now, credit_limit_micros=limit, actor=actor)
            limit = None
        threshold = _optional_micros(body.low_balance_threshold)
        account.change_settings(
            now,
            credit_limit_micros=limit,
            low_balance_threshold_micros=threshold,
            billing_basis=None if body.billing_basis is msgspec.UNSET else body.billing_basis,
            tier=None if body.tier is msgspec.UNSET or body.tier is None else body.tier,
            tax=None if body.tax is msgspec.UNSET else tax_profile(body.tax),
            name=None if body.name is msgspec.UNSET or body.name is None else body.name,
            actor=actor,
        )
        return account_view(account)

    return idempotent(ledger, idem, account_id, command)


def _optional_micros(value: object) -> int | None:
    if value is msgspec.UNSET:
        return None
    if value is None:
        return 0
    return to_micros(value)  # type: ignore[arg-type]


def close_account(ledger: Ledger, account_id: UUID, reason: str, actor: str,
                  idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, _: str) -> AccountView:
        account = work.touch(ledger.load(account_id))
        account.close(ledger.clock(), reason=reason, actor=actor)
        return account_view(account, closed_at_of(ledger, account))

    return idempotent(ledger, idem, account_id, command)


def grant_credit(ledger: Ledger, account_id: UUID, body: GrantCredit, actor: str,
                 idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, operation_id: str) -> GrantView:
        account = work.touch(ledger.load(account_id))
        now = ledger.clock()
        grant_id = f"grant:{operation_id}"
        amount = to_micros(body.amount)
        result = account.grant(grant_id, body.kind, amount, now, expires_at=body.expires_at,
                               reason=body.reason, actor=actor)
        return GrantView(
            grant_id=grant_id, entry_id=result.entry_id, account_id=account.id,
            kind=body.kind, amount=body.amount, currency=account.currency,  # type: ignore[arg-type]
            expires_at=body.expires_at, granted_at=now,
        )

    return idempotent(ledger, idem, account_id, command)


def adjust(ledger: Ledger, account_id: UUID, body: Adjustment, actor: str,
           idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, operation_id: str) -> PostedView:
        account = work.touch(ledger.load(account_id))
        now = ledger.clock()
        result = account.adjust(operation_id, body.direction, to_micros(body.amount), body.memo,
                                actor, now)
        return posted_view(account, result.entry_id, "adjustment", result.amount_micros,
                           result.balance_after_micros, now)

    return idempotent(ledger, idem, account_id, command)


FEE_SCOPE = "fee"


def charge_fee(ledger: Ledger, account_id: UUID, body: ChargeFee, idem: Idempotency) -> Outcome:
    """Charge a fee once per charge key, whatever Idempotency-Key the caller sends: a repeat
    of a charge key answers with the first charge (replayed) and writes nothing. A refusal
    (insufficient funds) writes nothing either, so the same key may succeed later."""

    def command(work: UnitOfWork, _: str) -> FeeView:
        return _charge(ledger, work, account_id, body, ledger.clock())

    scope = f"{FEE_SCOPE}:{account_id}"

    def once(work: UnitOfWork, operation_id: str) -> FeeView | _Charged:
        # Inside the transaction's retry loop: a concurrent save of the same key fails as a
        # whole and the retry finds the first charge here.
        first = ledger.stored_key(scope, body.charge_key)
        if first is not None and first[1] is not None:
            return _Charged(first[1])
        return command(work, operation_id)

    outcome = idempotent(ledger, idem, account_id, once)
    return outcome


def _charge(ledger: Ledger, work: UnitOfWork, account_id: UUID, body: ChargeFee,
            now: datetime) -> FeeView:
    """Price one fee for the account (its override, else the catalogue), charge it, and keep
    the answer under its charge key in the same transaction."""
    account = ledger.load(account_id)
    fee = _priced(account, ledger, body)
    try:
        result = account.charge_fee(fee, now)
    except InsufficientFunds:
        # Decided again on the stored account if the cached one is stale (Ledger.behind).
        if account.id in work.accounts or not ledger.behind(account):
            raise
        account = ledger.reloaded(account_id)
        fee = _priced(account, ledger, body)
        result = account.charge_fee(fee, now)
    work.touch(account)
    return _keep(work, account, body, fee, result, now)


def _priced(account: BillingAccount, ledger: Ledger, body: ChargeFee) -> FeeCharge:
    """The fee at the account's price (its override, else the catalogue). Raises
    UnknownProduct."""
    unit_price = account.unit_price_for(body.product, ledger.catalogue())
    proration = body.proration
    return FeeCharge(
        charge_key=body.charge_key, product=body.product, quantity=body.quantity,
        unit_price_micros=unit_price, reference=body.reference, period=body.period,
        days=proration.days if proration else None,
        days_in_period=proration.days_in_period if proration else None,
        description=body.description or "",
    )


def _keep(work: UnitOfWork, account: BillingAccount, body: ChargeFee, fee: FeeCharge,
          result: EntryResult, now: datetime) -> FeeView:
    """The answer to a fee charged, kept under its charge key in the same transaction."""
    proration = body.proration
    view = FeeView(
        entry_id=result.entry_id, account_id=account.id, charge_key=body.charge_key,
        kind="fee", product=body.product, quantity=body.quantity,
        unit_price=format_micros(fee.unit_price_micros),
        amount=format_micros(-result.amount_micros),
        currency=account.currency, reference=body.reference,  # type: ignore[arg-type]
        period=body.period,
        proration=FeeProration(days=proration.days, days_in_period=proration.days_in_period)
        if proration else None,
        balance_after=format_micros(result.balance_after_micros), occurred_at=now,
    )
    work.rows.keys.append(IdempotencyRow(f"{FEE_SCOPE}:{account.id}", body.charge_key,
                                         account.id, None, _encoder.encode(view)))
    return view


# Domain errors a batch reports per fee: (status, problem type), as the HTTP layer maps them.
_FEE_REJECTIONS: dict[type[Exception], tuple[int, str]] = {
    AccountNotFound: (404, "account-not-found"),
    AccountClosed: (409, "account-closed"),
    UnknownProduct: (422, "unknown-product"),
    DuplicateKey: (409, "duplicate"),
    InvalidRequest: (422, "invalid-request"),
}


def _not_charged(fee: AccountFee, exc: LedgerError) -> FeeOutcome:
    """A fee refused for funds (nothing written; the key may succeed later) or rejected."""
    if isinstance(exc, InsufficientFunds):
        return FeeOutcome(charge_key=fee.charge_key, account_id=fee.account_id,
                          outcome="refused", status=422, problem_type="insufficient-funds",
                          detail=str(exc)[:500])
    status, kind = next((v for k, v in _FEE_REJECTIONS.items() if isinstance(exc, k)),
                        (422, "ledger-rule"))
    return FeeOutcome(charge_key=fee.charge_key, account_id=fee.account_id, outcome="rejected",
                      status=status, problem_type=kind, detail=str(exc)[:500])


def charge_fees(ledger: Ledger, body: ChargeFees) -> bytes:
    """Many accounts' fees in one transaction: each charged once per charge key (a key
    charged before answers with its first charge), refused for funds or rejected on its own
    without stopping the others. The whole batch commits together, or is retried together
    when another writer saved one of its accounts first.

    An account's fees of the batch are charged together, in the order sent, as ONE
    FeesCharged event (each fee its own line: its own entry, statement line and
    entry_posted message, exactly as one FeeCharged event per fee gave), and the batch's
    accounts not in the cache are loaded in one query (`Ledger.load_many`)."""

    def command(work: UnitOfWork) -> FeeOutcomes:
        now = ledger.clock()
        fees = body.charges
        first = _charged_before(ledger, fees)
        results: list[FeeOutcome | None] = [None] * len(fees)
        by_account: dict[UUID, list[int]] = {}
        for index, fee in enumerate(fees):
            known = first.get((f"{FEE_SCOPE}:{fee.account_id}", fee.charge_key))
            if known is not None:
                results[index] = FeeOutcome(charge_key=fee.charge_key,
                                            account_id=fee.account_id, outcome="charged",
                                            fee=known)
            else:
                by_account.setdefault(fee.account_id, []).append(index)
        ledger.load_many(list(by_account))
        for account_id, indexes in by_account.items():
            _charge_account(ledger, work, account_id, [(i, fees[i]) for i in indexes],
                            results, now)
        return FeeOutcomes(results=cast("list[FeeOutcome]", results))

    return _encoder.encode(ledger.run(command))


def _charge_account(ledger: Ledger, work: UnitOfWork, account_id: UUID,
                    fees: list[tuple[int, AccountFee]], results: list[FeeOutcome | None],
                    now: datetime) -> None:
    """One account's fees of a batch: priced, then charged by the account as one event."""
    try:
        account = ledger.load(account_id)
    except AccountNotFound as exc:
        for index, fee in fees:
            results[index] = _not_charged(fee, exc)
        return

    def price_and_charge(account: BillingAccount
                         ) -> tuple[list[tuple[int, AccountFee, FeeCharge]], list[Any]]:
        priced: list[tuple[int, AccountFee, FeeCharge]] = []
        for index, fee in fees:
            try:
                priced.append((index, fee, _priced(account, ledger, fee)))
            except LedgerError as exc:
                results[index] = _not_charged(fee, exc)
        if not priced:
            return priced, []
        return priced, list(account.charge_fees([charge for _, _, charge in priced], now))

    priced, outcomes = price_and_charge(account)
    if (any(isinstance(outcome, InsufficientFunds) for outcome in outcomes)
            and ledger.behind(account)):
        # Refused on a stale cached account: decided again on the stored one.
        account = ledger.reloaded(account_id)
        priced, outcomes = price_and_charge(account)
    if not priced:
        return
    charged: dict[str, FeeView] = {}  # the same key twice: the second answers the first
    for (index, fee, charge), outcome in zip(priced, outcomes, strict=True):
        if isinstance(outcome, EntryResult):
            charged[fee.charge_key] = _keep(work, account, fee, charge, outcome, now)
            results[index] = FeeOutcome(charge_key=fee.charge_key, account_id=account_id,
                                        outcome="charged", fee=charged[fee.charge_key])
        elif isinstance(outcome, DuplicateKey) and fee.charge_key in charged:
            results[index] = FeeOutcome(charge_key=fee.charge_key, account_id=account_id,
                                        outcome="charged", fee=charged[fee.charge_key])
        else:
            results[index] = _not_charged(fee, outcome)
    if charged:
        work.touch(account)


def _charged_before(ledger: Ledger, fees: list[AccountFee]) -> dict[tuple[str, str], FeeView]:
    rows = ledger.query(
        "SELECT k.scope, k.key, k.response FROM {schema}.idempotency_keys k"
        " JOIN unnest(%s::text[], %s::text[]) AS wanted(scope, key)"
        " ON k.scope = wanted.scope AND k.key = wanted.key",
        ([f"{FEE_SCOPE}:{fee.account_id}" for fee in fees], [fee.charge_key for fee in fees]))
    return {(scope, key): msgspec.json.decode(bytes(response), type=FeeView)
            for scope, key, response in rows if response is not None}


class _Charged(msgspec.Struct):
    """Marker: the charge key was charged before; `response` is that first charge."""

    response: bytes


def refund(ledger: Ledger, account_id: UUID, body: RefundRequest, actor: str,
           idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, operation_id: str) -> PostedView:
        account = work.touch(ledger.load(account_id))
        debit = find_debit(ledger, account_id, str(body.entry_id))
        now = ledger.clock()
        amount = to_micros(body.amount) if body.amount is not None else None
        result = account.refund(operation_id, debit, amount, body.reason, actor, now)
        entry_id = result.entry_id or str(body.entry_id)
        return posted_view(account, entry_id, "refund", result.refunded_micros,
                           account.balance_micros, now)

    return idempotent(ledger, idem, account_id, command)


def find_debit(ledger: Ledger, account_id: UUID, entry_id: str) -> DebitRef:
    """The debit line an entry id names, read from the event that recorded it."""
    try:
        entry_uuid = UUID(entry_id)
    except ValueError:  # entry ids are UUIDs: any other text names no entry
        raise EntryNotFound(f"no entry {entry_id} on account {account_id}") from None
    rows = ledger.query(
        "SELECT originator_version FROM {schema}.entry_index"
        " WHERE entry_id = %s AND account_id = %s",
        (entry_uuid, account_id),
    )
    if not rows:
        raise EntryNotFound(f"no entry {entry_id} on account {account_id}")
    version = rows[0][0]
    for event in ledger.app.events.get(account_id, gt=version - 1, lte=version):
        # Usage lines are refundable debits; the lines of a FeesCharged event are fees, which
        # are not (as a FeeCharged event is not).
        for line in event.lines if isinstance(event, BillingAccount.UsageRecorded) else ():
            if line["entry_id"] == entry_id:
                return DebitRef.from_usage_line(line)
        if getattr(event, "entry_id", None) == entry_id and getattr(event, "direction", None) == "debit":
            return DebitRef(entry_id=entry_id, amount_micros=event.amount_micros,  # type: ignore[attr-defined]
                            grants_consumed=tuple(event.grants_consumed),  # type: ignore[attr-defined]
                            overdraft_micros=event.overdraft_micros,  # type: ignore[attr-defined]
                            occurred_at=event.timestamp.isoformat(),  # type: ignore[attr-defined]
                            kind="adjustment")
    raise EntryNotFound(f"entry {entry_id} is not a debit that can be refunded")


def set_price(ledger: Ledger, account_id: UUID, product: str, body: PriceOverride, actor: str,
              idem: Idempotency) -> Outcome:
    def command(work: UnitOfWork, _: str) -> PriceOverrideView:
        account = work.touch(ledger.load(account_id))
        now = ledger.clock()
        account.set_price_override(product, to_micros(body.unit_price), now, actor=actor)
        return PriceOverrideView(
            account_id=account.id, product=product, unit_price=body.unit_price,
            currency=account.currency, valid_until=body.valid_until, set_at=now,  # type: ignore[arg-type]
        )

    return idempotent(ledger, idem, account_id, command)


# ------------------------------------------------------------------ payments

PAYMENT_RECEIVED_SCOPE = "payment:received"
PAYMENT_REFUNDED_SCOPE = "payment:refunded"


def credit_payment(ledger: Ledger, payment: PaymentReceived) -> bool:
    """Credit a payment (net of VAT) exactly once per provider payment id. False: a repeat."""
    key = f"{payment.provider}:{payment.payment_id}"

    def command(work: UnitOfWork) -> bool:
        if ledger.seen_keys(PAYMENT_RECEIVED_SCOPE, [key]):
            return False
        account = work.touch(ledger.load(payment.account_id))
        account.purchase_credit(payment.payment_id, payment.provider, to_micros(payment.amount),
                                payment.currency, ledger.clock(),
                                reference=payment.provider_reference, purpose=payment.purpose)
        work.rows.keys.append(IdempotencyRow(PAYMENT_RECEIVED_SCOPE, key, account.id))
        return True

    return bool(ledger.run(command))


def reverse_payment(ledger: Ledger, refund_msg: PaymentRefunded) -> bool:
    """Take a provider refund back from the account, once per refund id; may overdraw."""
    key = f"{refund_msg.provider}:{refund_msg.refund_id}"

    def command(work: UnitOfWork) -> bool:
        if ledger.seen_keys(PAYMENT_REFUNDED_SCOPE, [key]):
            return False
        account = work.touch(ledger.load(refund_msg.account_id))
        account.reverse_payment(refund_msg.payment_id, refund_msg.provider,
                                to_micros(refund_msg.amount), ledger.clock(),
                                reason=refund_msg.reason or "provider refund")
        work.rows.keys.append(IdempotencyRow(PAYMENT_REFUNDED_SCOPE, key, account.id))
        return True

    return bool(ledger.run(command))


# ------------------------------------------------------------------ expiry sweep

SWEEP_ACCOUNTS_MAX = 500
# With several ledger processes each sweeps its own accounts among this many times as many due.
SWEEP_SCAN_FACTOR = 8


def sweep_expiries(ledger: Ledger, owns: Callable[[UUID], bool] | None = None) -> int:
    """Expire due holds and grants of accounts on the schedule; returns accounts swept.

    With `owns`, only the accounts it accepts (those of this process's partitions): the
    others are their owners' to sweep."""

    def command(work: UnitOfWork) -> int:
        now = ledger.clock()
        rows = ledger.query(
            "SELECT DISTINCT account_id FROM {schema}.expiry_schedule WHERE due_at <= %s"
            " LIMIT %s", (now, SWEEP_ACCOUNTS_MAX * (1 if owns is None else SWEEP_SCAN_FACTOR)))
        if owns is not None:
            rows = [row for row in rows if owns(row[0])][:SWEEP_ACCOUNTS_MAX]
        for (account_id,) in rows:
            try:
                account = ledger.load(account_id)
            except AccountNotFound:
                work.rows.unschedule.append((account_id, now))
                continue
            account.expire_holds(now)
            account.expire_grants(now)
            if account.pending_events:
                work.touch(account)
            work.rows.unschedule.append((account_id, now))
        return len(rows)

    return int(ledger.run(command))
