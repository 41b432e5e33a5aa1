"""Random command sequences against the real aggregate in an in-memory event store, checked
after every step against an independent reference model built from dicts and ints.

The harness plays the app layer: it saves after each command, keeps the processed usage event
ids (so a redelivered message changes nothing), and finds a debit's reference in the stored
events before refunding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import pytest
from eventsourcing.application import Application
from hypothesis import HealthCheck, settings
from hypothesis import event as note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger_service.domain import (
    AccountClosed,
    BillingAccount,
    CreditLimitExceeded,
    DebitRef,
    HoldNotFound,
    InsufficientFunds,
    InvalidMemo,
    InvalidTransition,
    RefundExceedsDebit,
    UsageLine,
    debit_refs_of,
)
from ledger_service.domain.errors import DuplicateKey, InvalidRequest
from ledger_service.domain.fees import FeeCharge, prorated_micros
from ledger_service.domain.postings import customer_balance_micros, event_postings

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
PROMOTIONAL = ("signup_promo", "mobile_verification", "referral", "bonus", "compensation")
TRIAL_PROMO = ("signup_promo", "mobile_verification", "referral")
PAID = ("purchased", "adjustment", "refund")
ACCOUNTS_MAX = 3
EVENT_ID_POOL = 12  # small, so usage event ids repeat across batches
ACCOUNT_NAMESPACE = UUID("6f1c5b52-8f7e-4a57-9a44-2b0d8a4f0c11")

amounts = st.sampled_from([1, 39_500, 250_000, 1_000_000, 3_000_000, 10_000_000])
prices = st.sampled_from([0, 1, 39_500, 1_000_000])


class StoredEvents(Application):
    snapshotting_intervals = {BillingAccount: 5}


# ------------------------------------------------------------------ reference model


@dataclass
class RefGrant:
    kind: str
    remaining: int
    expires_at: datetime | None
    seq: int


@dataclass
class RefAccount:
    account_id: UUID
    account_type: str
    currency: str
    credit_limit: int
    basis: str
    closed: bool = False
    grants: dict[str, RefGrant] = field(default_factory=dict)
    seq: int = 0
    deficit: int = 0
    holds: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    captured: set[str] = field(default_factory=set)
    refunded: dict[str, int] = field(default_factory=dict)
    debits: dict[str, tuple[int, str]] = field(default_factory=dict)  # entry -> amount, kind
    fees_charged: set[str] = field(default_factory=set)

    @property
    def balance(self) -> int:
        return sum(g.remaining for g in self.grants.values()) - self.deficit

    @property
    def held(self) -> int:
        return sum(amount for amount, _ in self.holds.values())

    @property
    def locked(self) -> int:
        if self.account_type != "trial":
            return 0
        return sum(g.remaining for g in self.grants.values() if g.kind == "purchased")

    @property
    def available(self) -> int:
        return self.balance - self.held - self.locked

    @property
    def floor(self) -> int | None:
        return {"postpay": -self.credit_limit, "system": None}.get(self.account_type, 0)

    def spendable(self, kind: str) -> bool:
        return self.account_type != "trial" or kind != "purchased"

    def credit(self, grant_id: str, kind: str, expires_at: datetime | None, amount: int) -> None:
        covered = min(amount, self.deficit)
        self.deficit -= covered
        rest = amount - covered
        if rest == 0:
            return
        if grant_id in self.grants:
            self.grants[grant_id].remaining += rest
        else:
            self.seq += 1
            self.grants[grant_id] = RefGrant(kind, rest, expires_at, self.seq)

    def due(self, now: datetime) -> list[str]:
        return [gid for gid, g in self.grants.items()
                if g.expires_at is not None and g.expires_at <= now]

    def expire_due(self, now: datetime) -> None:
        for gid in self.due(now):
            del self.grants[gid]

    def consume(self, amount: int, accept: Any = None,
                first: str | None = None) -> tuple[list[tuple[str, int]], int]:
        accept = accept or self.spendable

        def order(gid: str) -> tuple[int, int, datetime, int, int]:
            g = self.grants[gid]
            return (0 if gid == first else 1, 0 if g.kind in PROMOTIONAL else 1,
                    1 if g.expires_at is None else 0, g.expires_at or T0, g.seq)

        consumed = []
        for gid in sorted(self.grants, key=order):
            g = self.grants[gid]
            if amount == 0:
                break
            if gid != first and not accept(g.kind):
                continue
            take = min(amount, g.remaining)
            g.remaining -= take
            amount -= take
            consumed.append((gid, take))
            if g.remaining == 0:
                del self.grants[gid]
        self.deficit += amount
        return consumed, amount


# ------------------------------------------------------------------ the machine


class LedgerMachine(RuleBasedStateMachine):
    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        self.app = StoredEvents()
        self.now = T0
        self.live: dict[UUID, BillingAccount] = {}
        self.ref: dict[UUID, RefAccount] = {}
        self.processed: set[tuple[UUID, str]] = set()  # the app layer's duplicate filter
        self.debit_refs: dict[str, DebitRef] = {}
        self.hold_ids: dict[UUID, list[str]] = {}
        self.payments: dict[UUID, list[str]] = {}
        self.counter = 0

    def teardown(self) -> None:
        self.app.close()

    # ------------------------------------------------------------------ helpers

    def next_key(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def log_length(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def save(self, account: BillingAccount) -> list[Any]:
        pending = list(account.pending_events)
        self.app.save(account)
        for event in pending:
            for ref in debit_refs_of(event):
                self.debit_refs[ref.entry_id] = ref
        return pending

    def expect_rejection(self, account: BillingAccount, error: type[Exception],
                         command: Any) -> None:
        note(f"rejected: {error.__name__}")
        before = (self.log_length(), account.version, account.balance_micros)
        with pytest.raises(error):
            command()
        assert account.pending_events == []
        assert (self.log_length(), account.version, account.balance_micros) == before

    # ------------------------------------------------------------------ rules

    @initialize(target=accounts,
                account_type=st.sampled_from(["trial", "prepay", "postpay"]),
                currency=st.sampled_from(["GBP", "EUR"]),
                basis=st.sampled_from(["submitted", "delivered"]))
    def open_first(self, account_type: str, currency: str, basis: str) -> UUID:
        account_id = self.open(account_type, currency, basis, 5_000_000)
        # start with credit that expires soon, so spending, expiry and refunds interleave
        self.grant(account_id, "signup_promo", 3_000_000, 60)
        self.purchase(account_id, 10_000_000)
        return account_id

    @precondition(lambda self: len(self.live) < ACCOUNTS_MAX)
    @rule(target=accounts,
          account_type=st.sampled_from(["trial", "prepay", "postpay", "system"]),
          currency=st.sampled_from(["GBP", "EUR", "USD"]),
          basis=st.sampled_from(["submitted", "delivered"]),
          credit_limit=st.sampled_from([0, 1_000_000, 5_000_000]))
    def open_another(self, account_type: str, currency: str, basis: str,
                     credit_limit: int) -> UUID:
        return self.open(account_type, currency, basis, credit_limit)

    def open(self, account_type: str, currency: str, basis: str, credit_limit: int) -> UUID:
        limit = credit_limit if account_type == "postpay" else 0
        # deterministic ids: hypothesis needs the same draws to see the same state
        account_id = uuid5(ACCOUNT_NAMESPACE, self.next_key("account"))
        account = BillingAccount.open(account_id, self.now, account_type=account_type,
                                      currency=currency, credit_limit_micros=limit,
                                      billing_basis=basis,
                                      low_balance_threshold_micros=2_000_000)
        self.save(account)
        self.live[account.id] = account
        self.ref[account.id] = RefAccount(account.id, account_type, currency, limit, basis)
        self.hold_ids[account.id] = []
        self.payments[account.id] = []
        return account.id

    @rule(minutes=st.sampled_from([1, 4, 30, 600, 3 * 1440]))
    def advance_time(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(account_id=accounts, kind=st.sampled_from([*PROMOTIONAL, "purchased"]),
          amount=amounts, expires_in_minutes=st.sampled_from([None, 5, 60, 2 * 1440]))
    def grant(self, account_id: UUID, kind: str, amount: int,
              expires_in_minutes: int | None) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        expires_at = None if expires_in_minutes is None else (
            self.now + timedelta(minutes=expires_in_minutes))
        grant_id = self.next_key("g")
        account.grant(grant_id, kind, amount, self.now, expires_at=expires_at,
                      reason="stateful test", actor="hypothesis")
        self.save(account)
        ref.credit(grant_id, kind, expires_at, amount)

    @rule(account_id=accounts, amount=amounts)
    def purchase(self, account_id: UUID, amount: int) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        payment_id = self.next_key("pay")
        account.purchase_credit(payment_id, "stripe", amount, ref.currency, self.now)
        self.save(account)
        ref.credit(f"payment:stripe:{payment_id}", "purchased", None, amount)
        self.payments[account_id].append(payment_id)

    @rule(account_id=accounts, quantity=st.integers(1, 5), price=prices,
          ttl_minutes=st.sampled_from([1, 5, 60]))
    def authorize(self, account_id: UUID, quantity: int, price: int, ttl_minutes: int) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        hold_id = self.next_key("h")
        expires_at = self.now + timedelta(minutes=ttl_minutes)

        def command() -> Any:
            return account.authorize(hold_id, f"req-{hold_id}", "sms", quantity, price,
                                     expires_at, self.now)

        if ref.closed:
            self.expect_rejection(account, AccountClosed, command)
            return
        amount = 0 if ref.account_type == "system" else quantity * price
        due = ref.due(self.now)
        available_after_expiry = ref.available - sum(
            ref.grants[g].remaining for g in due if ref.spendable(ref.grants[g].kind))
        floor = ref.floor
        if floor is not None and available_after_expiry - amount < floor:
            error = CreditLimitExceeded if ref.account_type == "postpay" else InsufficientFunds
            self.expect_rejection(account, error, command)
            return
        result = command()
        self.save(account)
        ref.expire_due(self.now)
        ref.holds[hold_id] = (amount, expires_at)
        self.hold_ids[account_id].append(hold_id)
        assert result.amount_micros == amount
        if floor is not None:
            assert account.available_micros >= floor, "an authorization crossed the floor"

    @rule(account_id=accounts, data=st.data())
    def release(self, account_id: UUID, data: st.DataObject) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        hold_id = data.draw(st.sampled_from([*self.hold_ids[account_id], "no-such-hold"]))
        if hold_id not in ref.holds:
            self.expect_rejection(account, HoldNotFound,
                                  lambda: account.release_hold(hold_id, self.now))
            return
        assert account.release_hold(hold_id, self.now) == ref.holds.pop(hold_id)[0]
        self.save(account)

    @rule(account_id=accounts)
    def expire_holds(self, account_id: UUID) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        expected = {h for h, (_, at) in ref.holds.items() if at <= self.now}
        assert set(account.expire_holds(self.now)) == expected
        self.save(account)
        for hold_id in expected:
            del ref.holds[hold_id]

    @rule(account_id=accounts)
    def expire_grants(self, account_id: UUID) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        before = self.log_length()
        expected = set(ref.due(self.now))
        assert set(account.expire_grants(self.now)) == expected
        self.save(account)
        ref.expire_due(self.now)
        if not expected:
            assert self.log_length() == before

    @rule(account_id=accounts, data=st.data())
    def record_usage(self, account_id: UUID, data: st.DataObject) -> None:
        account = self.live[account_id]
        open_holds = sorted(self.ref[account_id].holds)
        hold_ids = st.one_of(
            st.none(),
            st.sampled_from(open_holds) if open_holds else st.none(),
            st.sampled_from(self.hold_ids[account_id]) if self.hold_ids[account_id]
            else st.none(),
        )
        lines = data.draw(st.lists(st.builds(
            UsageLine,
            event_id=st.integers(0, EVENT_ID_POOL - 1).map(lambda i: f"e{i}"),
            product=st.just("sms"),
            quantity=st.integers(1, 3),
            unit_price_micros=prices,
            status=st.sampled_from(["submitted", "delivered"] * 3 + ["failed", "queued"]),
            occurred_at=st.just(self.now),
            hold_id=hold_ids,
        ), min_size=1, max_size=4))
        self.apply_usage_once(account, lines)

    @rule(account_id=accounts, data=st.data(), quantity=st.integers(1, 3),
          price=st.sampled_from([39_500, 1_000_000]))
    def bill_usage(self, account_id: UUID, data: st.DataObject, quantity: int,
                   price: int) -> None:
        """Billable usage at the account's basis, capturing an open hold when there is one:
        the common case, drawn more often than record_usage's mix of statuses."""
        ref = self.ref[account_id]
        hold_id = data.draw(st.sampled_from(sorted(ref.holds))) if ref.holds else None
        event_id = f"b{self.next_key('')}"
        self.apply_usage_once(self.live[account_id], [
            UsageLine(event_id, "sms", quantity, price, ref.basis, self.now, hold_id=hold_id)])

    def apply_usage_once(self, account: BillingAccount, lines: list[UsageLine]) -> None:
        """The app layer's intake: drop event ids already processed, apply the rest, mark
        them processed once committed."""
        ref = self.ref[account.id]
        fresh = [line for line in lines if (account.id, line.event_id) not in self.processed]
        before = (self.log_length(), account.version, account.balance_micros)
        if not fresh:
            assert (self.log_length(), account.version, account.balance_micros) == before
            return
        if ref.closed:
            self.expect_rejection(account, AccountClosed,
                                  lambda: account.record_usage(fresh, self.now))
            return
        result = account.record_usage(fresh, self.now)
        pending = self.save(account)
        self.processed.update((account.id, line.event_id) for line in fresh)
        ref.expire_due(self.now)
        stored = [line for e in pending if type(e).__name__ == "UsageRecorded"
                  for line in e.lines]
        seen: set[str] = set()
        expected = [self.reference_line(ref, line, seen) for line in fresh]
        assert [o.outcome for o in result.lines] == [outcome for outcome, _ in expected]
        for outcome in result.lines:
            note(f"usage line: {outcome.outcome} {outcome.reason or ''}".strip())
        consumed_expected = [c for outcome, c in expected if outcome in ("billed", "released")]
        assert [[(c["grant_id"], c["amount_micros"]) for c in line["grants_consumed"]]
                for line in stored] == consumed_expected

    def reference_line(self, ref: RefAccount, line: UsageLine,
                       seen: set[str]) -> tuple[str, list[tuple[str, int]]]:
        if line.event_id in seen:
            return "ignored", []
        seen.add(line.event_id)
        hold_id = line.hold_id or ""
        hold = ref.holds.get(hold_id)
        if line.status == "failed":
            if hold is None:
                return "ignored", []
            del ref.holds[hold_id]
            return "released", []
        if line.status != ref.basis or hold_id in ref.captured:
            return "ignored", []
        if ref.account_type == "system":
            if hold is None:
                return "ignored", []
            del ref.holds[hold_id]
            return "released", []
        if hold is not None:
            del ref.holds[hold_id]
            ref.captured.add(hold_id)
        amount = line.quantity * line.unit_price_micros
        consumed, _ = ref.consume(amount)
        if amount:
            ref.debits[str(uuid5(ref.account_id, line.event_id))] = (amount, "usage")
        return "billed", consumed

    @rule(account_id=accounts, data=st.data())
    def redeliver_usage(self, account_id: UUID, data: st.DataObject) -> None:
        """A duplicate delivery of messages already processed changes nothing."""
        account = self.live[account_id]
        done = sorted(eid for aid, eid in self.processed if aid == account_id)
        if not done:
            return
        event_id = data.draw(st.sampled_from(done))
        basis = self.ref[account_id].basis
        self.apply_usage_once(account, [UsageLine(event_id, "sms", 1, 1_000_000, basis,
                                                  self.now)])

    @rule(account_id=accounts, data=st.data(), partial=st.booleans())
    def refund(self, account_id: UUID, data: st.DataObject, partial: bool) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        if not ref.debits:
            return
        entry_id = data.draw(st.sampled_from(sorted(ref.debits)))
        debited, _ = ref.debits[entry_id]
        already = ref.refunded.get(entry_id, 0)
        refundable = debited - already
        amount = data.draw(st.integers(1, max(refundable, 1))) if partial else None
        if partial and data.draw(st.booleans()):
            amount = debited  # sometimes more than is left
        refund_id = self.next_key("r")

        def command() -> Any:
            return account.refund(refund_id, self.debit_refs[entry_id], amount, "stateful",
                                  "hypothesis", self.now)

        if refundable > 0 and amount is not None and amount > refundable:
            self.expect_rejection(account, RefundExceedsDebit, command)
            return
        before = self.log_length()
        result = command()
        self.save(account)
        if refundable == 0:
            note("refund: no-op")
            assert result.no_op
            assert self.log_length() == before
            return
        take = refundable if amount is None else amount
        note("refund: " + ("full" if take == refundable else "partial"))
        ref.expire_due(self.now)
        self.reference_refund(ref, self.debit_refs[entry_id], already, take, refund_id)
        ref.refunded[entry_id] = already + take
        assert result.refunded_micros == take
        for restoration in result.restorations:
            note(f"refund restoration: {restoration['effect']}")

    def reference_refund(self, ref: RefAccount, debit: DebitRef, already: int, take: int,
                         refund_id: str) -> None:
        parts: list[tuple[str | None, str, datetime | None, int]] = [
            (None, "refund", None, debit.overdraft_micros)]
        for c in reversed(debit.grants_consumed):
            expires = None if c["expires_at"] is None else datetime.fromisoformat(
                c["expires_at"])
            parts.append((c["grant_id"], c["kind"], expires, c["amount_micros"]))
        skip = already
        for grant_id, kind, expires_at, size in parts:
            skipped = min(skip, size)
            skip -= skipped
            share = min(take, size - skipped)
            take -= share
            if not share:
                continue
            if grant_id is None:
                ref.credit(f"refund:{refund_id}", "refund", None, share)
            elif grant_id in ref.grants or expires_at is None or expires_at > self.now:
                ref.credit(grant_id, kind, expires_at, share)
            # else: the grant has lapsed, the part expires at once: no credit

    @rule(account_id=accounts, direction=st.sampled_from(["credit", "debit"]), amount=amounts,
          memo=st.sampled_from(["goodwill after outage", "short", "x" * 501]))
    def adjust(self, account_id: UUID, direction: str, amount: int, memo: str) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        adjustment_id = self.next_key("a")

        def command() -> Any:
            return account.adjust(adjustment_id, direction, amount, memo, "hypothesis",
                                  self.now)

        if not 10 <= len(memo) <= 500:
            self.expect_rejection(account, InvalidMemo, command)
            return
        command()
        pending = self.save(account)
        if direction == "credit":
            ref.credit(f"adjustment:{adjustment_id}", "adjustment", None, amount)
            return
        ref.expire_due(self.now)
        ref.consume(amount)
        adjusted = next(e for e in pending if type(e).__name__ == "Adjusted")
        ref.debits[adjusted.entry_id] = (amount, "adjustment")

    @rule(account_id=accounts, item=st.integers(0, 2), period=st.sampled_from(
              ["setup", "2026-02", "2026-03"]), quantity=st.integers(1, 3),
          price=st.sampled_from([0, 1, 1_000_000, 2_000_000, 9_000_000]),
          days=st.sampled_from([None, 1, 9, 28]))
    def charge_fee(self, account_id: UUID, item: int, period: str, quantity: int, price: int,
                   days: int | None) -> None:
        """A recurring fee: prepay and trial refused without the funds (nothing written),
        postpay always charged; a charge key already charged changes nothing."""
        account, ref = self.live[account_id], self.ref[account_id]
        key = f"recurring:item{item}:{period}"
        prorated = days is not None and period != "setup"
        fee = FeeCharge(charge_key=key, product="vmn", quantity=quantity,
                        unit_price_micros=price, reference=f"+4477009000{item}",
                        period=None if period == "setup" else period,
                        days=days if prorated else None,
                        days_in_period=28 if prorated else None)
        amount = prorated_micros(price, quantity, fee.days, fee.days_in_period)

        def command() -> Any:
            return account.charge_fee(fee, self.now)

        if ref.closed:
            self.expect_rejection(account, AccountClosed, command)
            return
        if ref.account_type == "system":
            self.expect_rejection(account, InvalidRequest, command)
            return
        if key in ref.fees_charged:
            self.expect_rejection(account, DuplicateKey, command)
            return
        due = ref.due(self.now)
        available_after_expiry = ref.available - sum(
            ref.grants[g].remaining for g in due if ref.spendable(ref.grants[g].kind))
        if ref.account_type in ("prepay", "trial") and available_after_expiry - amount < 0:
            self.expect_rejection(account, InsufficientFunds, command)
            return
        result = command()
        self.save(account)
        note(f"fee charged ({ref.account_type})")
        ref.expire_due(self.now)
        ref.consume(amount)
        ref.fees_charged.add(key)
        assert result.amount_micros == -amount
        if ref.account_type in ("prepay", "trial"):
            assert account.available_micros >= 0, "a fee took a prepay account below its floor"

    @rule(account_id=accounts, drawn=st.lists(st.tuples(
              st.integers(0, 3), st.sampled_from(["setup", "2026-02", "2026-03"]),
              st.integers(1, 3), st.sampled_from([0, 1, 1_000_000, 2_000_000, 9_000_000])),
              min_size=1, max_size=6))
    def charge_fees(self, account_id: UUID, drawn: list[tuple[int, str, int, int]]) -> None:
        """A batch of fees as one FeesCharged event (POST /v1/charges): each fee judged as
        charge_fee would judge it, in turn (repeated keys, refusals for funds alone); nothing
        charged records nothing."""
        account, ref = self.live[account_id], self.ref[account_id]
        fees = [FeeCharge(charge_key=f"recurring:item{item}:{period}", product="vmn",
                          quantity=quantity, unit_price_micros=price, reference="+447700900",
                          period=None if period == "setup" else period)
                for item, period, quantity, price in drawn]
        before = (self.log_length(), account.version)
        outcomes = account.charge_fees(fees, self.now)
        expected: list[type[Exception] | int] = []
        for fee in fees:
            if ref.closed:
                expected.append(AccountClosed)
            elif ref.account_type == "system":
                expected.append(InvalidRequest)
            elif fee.charge_key in ref.fees_charged:
                expected.append(DuplicateKey)
            else:
                due = ref.due(self.now)
                available = ref.available - sum(
                    ref.grants[g].remaining for g in due if ref.spendable(ref.grants[g].kind))
                if ref.account_type in ("prepay", "trial") and available < fee.amount_micros:
                    expected.append(InsufficientFunds)
                    continue
                ref.expire_due(self.now)
                ref.consume(fee.amount_micros)
                ref.fees_charged.add(fee.charge_key)
                expected.append(-fee.amount_micros)
        got = [type(o) if isinstance(o, Exception) else o.amount_micros for o in outcomes]
        assert got == expected
        if all(isinstance(o, Exception) for o in outcomes):
            assert account.pending_events == []
            assert (self.log_length(), account.version) == before
            return
        pending = self.save(account)
        note(f"fees charged ({ref.account_type}): {sum(isinstance(g, int) for g in got)}")
        assert [type(e).__name__ for e in pending].count("FeesCharged") == 1
        if ref.account_type in ("prepay", "trial"):
            assert account.available_micros >= 0, "fees took a prepay account below its floor"

    @rule(account_id=accounts, data=st.data(), amount=amounts)
    def reverse_payment(self, account_id: UUID, data: st.DataObject, amount: int) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        if not self.payments[account_id]:
            return
        payment_id = data.draw(st.sampled_from(self.payments[account_id]))
        account.reverse_payment(payment_id, "stripe", amount, self.now, reason="refunded")
        self.save(account)
        ref.expire_due(self.now)
        ref.consume(amount, accept=lambda kind: kind in PAID,
                    first=f"payment:stripe:{payment_id}")

    @rule(account_id=accounts, to_type=st.sampled_from(["trial", "prepay", "postpay"]),
          credit_limit=st.sampled_from([None, 0, 2_000_000]))
    def convert(self, account_id: UUID, to_type: str, credit_limit: int | None) -> None:
        account, ref = self.live[account_id], self.ref[account_id]
        from_type = ref.account_type
        if to_type != "postpay" and credit_limit:
            credit_limit = None

        def command() -> Any:
            return account.change_type(to_type, self.now, credit_limit_micros=credit_limit)

        if ref.closed:
            self.expect_rejection(account, AccountClosed, command)
            return
        if (to_type == "trial" and from_type != "trial") or (
                "system" in (from_type, to_type) and from_type != to_type):
            self.expect_rejection(account, InvalidTransition, command)
            return
        command()
        self.save(account)
        if to_type == "postpay":
            ref.credit_limit = ref.credit_limit if credit_limit is None else credit_limit
        else:
            ref.credit_limit = 0
        if from_type == "trial" and to_type != "trial":
            for gid in [g for g, grant in ref.grants.items() if grant.kind in TRIAL_PROMO]:
                del ref.grants[gid]
        ref.account_type = to_type

    @rule(account_id=accounts, dice=st.integers(0, 5))
    def close(self, account_id: UUID, dice: int) -> None:
        if dice:  # closing ends an account's story; keep it rare
            return
        account, ref = self.live[account_id], self.ref[account_id]
        assert account.close(self.now, reason="stateful", actor="hypothesis") is not ref.closed
        self.save(account)
        ref.closed = True
        ref.holds.clear()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def books_balance_and_agree_with_the_reference(self) -> None:
        totals: dict[str, int] = {}
        for account_id, account in self.live.items():
            ref = self.ref[account_id]
            events = list(self.app.repository.event_store.get(account_id))
            sums: dict[str, int] = {}
            for event in events:
                per_event: dict[str, int] = {}
                for p in event_postings(event):
                    per_event[p["currency"]] = per_event.get(p["currency"], 0) + p[
                        "amount_micros"]
                    totals[p["currency"]] = totals.get(p["currency"], 0) + p["amount_micros"]
                    sums[p["ledger_account"]] = sums.get(p["ledger_account"], 0) + p[
                        "amount_micros"]
                assert all(v == 0 for v in per_event.values()), type(event).__name__
            assert customer_balance_micros(sums, account_id) == account.balance_micros
            assert sums.get(f"customer:{account_id}:held", 0) == account.held_micros
            assert account.balance_micros == ref.balance
            assert account.held_micros == ref.held
            assert account.available_micros == ref.available
            assert account.deficit_micros == ref.deficit
            assert {g.grant_id: g.remaining_micros for g in account.grants} == {
                gid: g.remaining for gid, g in ref.grants.items()}
            assert all(g.remaining_micros > 0 for g in account.grants)
            assert {h.hold_id: h.amount_micros for h in account.open_holds} == {
                hid: amount for hid, (amount, _) in ref.holds.items()}
            account.check_invariants()
            assert self.app.repository.get(account_id) == account
        assert all(total == 0 for total in totals.values()), totals


TestLedgerStateful = LedgerMachine.TestCase
TestLedgerStateful.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
