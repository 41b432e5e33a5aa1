"""A ledger workload for projection tests: every kind of event, through the app's use cases,
on a clock the test moves. Other projection tests import it; its own test checks that it
really produces every event type the projections read.

Commands the domain refuses (insufficient funds, a closed account, ...) are part of the
workload: they must write nothing, and the projections must not notice them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from contracts.http.ledger import (
    AccountFee,
    Adjustment,
    ChargeFee,
    ChargeFees,
    GrantCredit,
    OpenAccount,
    PatchAccount,
    RefundRequest,
    Tax,
)
from contracts.ledger import AuthorizeRequest
from contracts.payments import PaymentReceived, PaymentRefunded
from contracts.usage import UsageRecorded
from ledger_service.app import accounts, intake
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from ledger_service.domain.errors import LedgerError
from ledger_service.domain.naming import event_name
from ledger_service.domain.postings import usage_entry_id
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.runner import ProjectionRunner, account_loader, connector
from services.database import apply_migrations, conninfo, eventsourcing_env
from tests.conftest import Infra
from tests.integration.ledger_fixtures import MIGRATIONS

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
GRANT_KINDS = ("signup_promo", "mobile_verification", "referral", "purchased", "bonus",
               "compensation")


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)  # every command at its own instant
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def build(database_url: str, clock: Clock) -> Ledger:
    apply_migrations(database_url, "ledger", MIGRATIONS)
    app = LedgerApplication(env=ledger_env(eventsourcing_env(database_url, "ledger")))
    return Ledger(app, clock=clock)


def runner_for(ledger: Ledger, database_url: str, **kw: Any) -> ProjectionRunner:
    return ProjectionRunner(connector(database_url), EventDecoder(ledger.app.mapper),
                            account_loader(ledger.app), **kw)


@contextmanager
def scratch_database(infra: Infra, label: str) -> Iterator[str]:
    """A database of its own, for tests that tamper with the log or kill processes."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo(infra.database_url))
    name = f"{parts['dbname']}_{label}_{uuid.uuid4().hex[:6]}"
    admin = conninfo(infra.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield infra.database_url.replace(f"/{parts['dbname']}", f"/{name}", 1)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def key() -> Idempotency:
    return Idempotency("test", None, "h")


@dataclass
class Workload:
    """Commands on a few accounts; what each created is remembered for later commands."""

    ledger: Ledger
    clock: Clock
    accounts: list[UUID] = field(default_factory=list)
    usage_entries: dict[UUID, list[str]] = field(default_factory=dict)
    holds: dict[UUID, list[str]] = field(default_factory=dict)
    payments: dict[UUID, list[str]] = field(default_factory=dict)
    counter: int = 0
    refused: int = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{uuid.uuid4().hex[:8]}-{self.counter}"

    def pick(self, index: int) -> UUID:
        return self.accounts[index % len(self.accounts)]

    def attempt(self, command: Any, *args: Any) -> Any:
        try:
            return command(*args)
        except LedgerError:
            self.refused += 1
            return None

    # -------------------------------------------------------------- commands

    def open(self, account_type: str = "prepay", currency: str = "GBP") -> UUID:
        account_id = uuid.uuid4()
        body = OpenAccount(account_id=account_id, type=account_type, currency=currency,  # type: ignore[arg-type]
                           tax=Tax(country="GB"),
                           credit_limit="5.00" if account_type == "postpay" else None,
                           low_balance_threshold="1.00")
        accounts.open_account(self.ledger, body, key())
        self.accounts.append(account_id)
        return account_id

    def grant(self, index: int, kind: str, amount: str, expires_in_s: int | None = None) -> None:
        expires = self.clock.now + timedelta(seconds=expires_in_s) if expires_in_s else None
        body = GrantCredit(kind=kind, amount=amount, expires_at=expires, reason="workload")  # type: ignore[arg-type]
        self.attempt(accounts.grant_credit, self.ledger, self.pick(index), body, "ops", key())

    def pay(self, index: int, amount: str, purpose: str = "topup") -> None:
        account_id = self.pick(index)
        currency = self.ledger.load(account_id).currency
        payment_id = self.next_id("pay")
        message = PaymentReceived(
            payment_id=payment_id, provider="stripe", provider_reference=f"pi_{payment_id}",
            account_id=account_id, purpose=purpose, amount=amount, vat_amount="0.00",  # type: ignore[arg-type]
            currency=currency, received_at=self.clock.now,  # type: ignore[arg-type]
            invoice_id="inv-1" if purpose == "invoice" else None)
        if self.attempt(accounts.credit_payment, self.ledger, message):
            self.payments.setdefault(account_id, []).append(payment_id)

    def reverse(self, index: int, amount: str) -> None:
        account_id = self.pick(index)
        paid = self.payments.get(account_id)
        if not paid:
            return
        currency = self.ledger.load(account_id).currency
        message = PaymentRefunded(
            event_id=self.next_id("rev"), refund_id=self.next_id("re"), payment_id=paid[0],
            provider="stripe", provider_reference="pi_x", account_id=account_id,
            purpose="topup", amount=amount, vat_amount="0.00", currency=currency,  # type: ignore[arg-type]
            refunded_at=self.clock.now)
        self.attempt(accounts.reverse_payment, self.ledger, message)

    def use(self, index: int, lines: int, status: str = "submitted", capture: bool = False,
            product: str = "sms") -> None:
        account_id = self.pick(index)
        batch = []
        for _ in range(lines):
            event_id = self.next_id("u")
            held = self.holds.get(account_id, [])
            hold_id = held.pop(0) if capture and held else None
            batch.append(UsageRecorded(
                event_id=event_id, account_id=account_id, product=product, quantity=1 + lines % 3,
                occurred_at=self.clock.now, status=status, hold_id=hold_id,  # type: ignore[arg-type]
                reference=f"campaign-{index % 3}"))
            if status == "submitted":
                self.usage_entries.setdefault(account_id, []).append(
                    usage_entry_id(account_id, event_id))
        intake.apply_usage(self.ledger, batch)

    def authorize(self, index: int, quantity: int, ttl_s: int = 300) -> None:
        account_id = self.pick(index)
        reply = intake.authorize(self.ledger, [AuthorizeRequest(
            request_id=self.next_id("auth"), account_id=account_id, product="sms",
            quantity=quantity, ttl_seconds=ttl_s)])[0]
        if reply.approved and reply.hold_id:
            self.holds.setdefault(account_id, []).append(reply.hold_id)

    def refund(self, index: int, partial: bool) -> None:
        account_id = self.pick(index)
        entries = self.usage_entries.get(account_id)
        if not entries:
            return
        body = RefundRequest(entry_id=UUID(entries[-1]), amount="0.01" if partial else None,
                             reason="carrier fault")
        self.attempt(accounts.refund, self.ledger, account_id, body, "ops", key())

    def adjust(self, index: int, direction: str, amount: str,
               memo: str = "workload adjustment") -> None:
        body = Adjustment(direction=direction, amount=amount, memo=memo)  # type: ignore[arg-type]
        self.attempt(accounts.adjust, self.ledger, self.pick(index), body, "ops", key())

    def fees(self, index: int, count: int, period: str = "2026-12") -> None:
        """A batch of fees (POST /v1/charges): the account's fees are one FeesCharged event;
        its first key sent twice."""
        account_id = self.pick(index)
        keys = [self.next_id("fee") for _ in range(count)]
        accounts.charge_fees(self.ledger, ChargeFees(charges=[
            AccountFee(account_id=account_id, charge_key=k, product="vmn", quantity=1,
                       reference=f"+4477009001{n:02d}", period=period)
            for n, k in enumerate([*keys, keys[0]])]))

    def fee(self, index: int) -> None:
        """One fee by the per-account route: a FeeCharged event."""
        body = ChargeFee(charge_key=self.next_id("fee"), product="shortcode_keyword",
                         quantity=1, reference="HELLO", period="2026-12")
        self.attempt(accounts.charge_fee, self.ledger, self.pick(index), body, key())

    def convert(self, index: int) -> None:
        self.attempt(accounts.patch_account, self.ledger, self.pick(index),
                     PatchAccount(type="prepay"), "ops", key())

    def close(self, index: int) -> None:
        self.attempt(accounts.close_account, self.ledger, self.pick(index), "done", "ops", key())

    def sweep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        accounts.sweep_expiries(self.ledger)

    # -------------------------------------------------------------- scripted and random

    def every_kind(self) -> None:
        """A fixed script that records every event type the projections read."""
        trial, prepay, postpay = self.open("trial"), self.open("prepay"), self.open("postpay")
        del trial, prepay, postpay
        self.grant(0, "signup_promo", "2.00", expires_in_s=3600)
        self.grant(0, "purchased", "3.00")
        self.grant(1, "bonus", "1.00", expires_in_s=60)
        self.pay(1, "10.00")
        self.pay(2, "1.00", purpose="invoice")
        self.authorize(1, 3)
        self.authorize(1, 2)
        self.authorize(1, 1)
        self.use(1, 2, capture=True)
        self.use(1, 1, status="failed", capture=True)
        self.authorize(1, 1, ttl_s=30)
        self.use(0, 3)
        self.use(2, 4, product="rcs_basic")
        self.refund(1, partial=True)
        self.refund(1, partial=False)
        self.adjust(1, "credit", "0.50", memo='tab\there, new\nline, back\\slash, "quoted", café')
        self.adjust(2, "debit", "7.00")  # past the credit limit: overdrawn
        self.reverse(1, "2.00")
        self.fees(1, 3)
        self.fee(1)
        self.fees(2, 2)  # postpay: past the credit limit
        self.sweep(120)  # the bonus grant and the short hold expire
        self.convert(0)  # trial -> prepay: promotional credit expires
        self.authorize(2, 1)
        self.close(2)  # releases the open hold
        self.use(1, 50)  # below the threshold: balance low


def commands(rng: random.Random, count: int) -> list[tuple[str, tuple[Any, ...]]]:
    """A random command sequence (for tests that want volume rather than a script)."""
    chosen = []
    for _ in range(count):
        name = rng.choice(["use", "use", "use", "grant", "pay", "authorize", "capture",
                           "refund", "adjust", "reverse", "sweep", "fees"])
        index = rng.randrange(10)
        args: tuple[Any, ...] = {
            "use": (index, rng.randint(1, 5)),
            "grant": (index, rng.choice(GRANT_KINDS), rng.choice(["0.50", "2.00"]),
                      rng.choice([None, 30, 3600])),
            "pay": (index, rng.choice(["1.00", "5.00"])),
            "authorize": (index, rng.randint(1, 4), rng.choice([30, 300])),
            "capture": (index, 1, "submitted", True),
            "refund": (index, rng.random() < 0.5),
            "adjust": (index, rng.choice(["credit", "debit"]), "0.25"),
            "reverse": (index, "0.50"),
            "sweep": (rng.choice([1, 40]),),
            "fees": (index, rng.randint(1, 4)),
        }[name]
        chosen.append(("use" if name == "capture" else name, args))
    return chosen


def run_commands(workload: Workload, script: list[tuple[str, tuple[Any, ...]]]) -> None:
    for name, args in script:
        getattr(workload, name)(*args)


# ------------------------------------------------------------------ its own check


def test_the_workload_records_every_event_type_the_projections_read(infra: Infra) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    try:
        workload = Workload(ledger, clock)
        workload.every_kind()
        types = {event_name(type(e)) for a in workload.accounts
                 for e in ledger.app.events.get(a)}
    finally:
        ledger.app.close()
    assert types >= {"Opened", "CreditGranted", "CreditPurchased", "HoldPlaced", "UsageRecorded",
                     "Refunded", "Adjusted", "PaymentReversed", "GrantsExpired", "HoldsExpired",
                     "TypeChanged", "Closed", "BalanceLow", "AccountOverdrawn", "FeeCharged",
                     "FeesCharged"}, types


# ------------------------------------------------------------------ the oracle


def expected_rows(ledger: Ledger, account_id: UUID) -> dict[str, Any]:
    """What each projection should hold for an account, from the aggregate and its events
    (not from the projections' code paths)."""
    from ledger_service.projections.statement import statement_entries

    ledger.evict([account_id])
    account = ledger.load(account_id)
    entries, usage, running = [], {}, 0
    for event in ledger.app.events.get(account_id):
        for entry in statement_entries(event):
            running += entry.amount_micros
            assert running == entry.balance_after_micros, entry
            entries.append((str(entry.entry_id), entry.kind, entry.amount_micros,
                            entry.balance_after_micros))
        usage_lines = event.lines if event_name(type(event)) == "UsageRecorded" else ()
        for line in usage_lines:  # a FeesCharged event's lines are fees, not usage
            if line["hold_outcome"] == "released":
                continue
            key = (line["occurred_at"][:10], line["product"])
            quantity, amount = usage.get(key, (0, 0))
            usage[key] = (quantity + line["quantity"], amount + line["amount_micros"])
    assert running == account.balance_micros
    return {
        "balance": (account.balance_micros, account.available_micros, account.held_micros,
                    account.version,
                    [(g.grant_id, g.kind, g.remaining_micros) for g in account.grants]),
        "statement": entries,
        "usage": usage,
        "holds": sorted((h.hold_id, h.amount_micros) for h in account.open_holds),
    }


def stored_rows(conn: psycopg.Connection[Any], account_id: UUID) -> dict[str, Any]:
    balance = conn.execute(
        "SELECT balance_micros, available_micros, held_micros, version, credits FROM balances"
        " WHERE account_id = %s", (account_id,)).fetchone()
    statement = conn.execute(
        "SELECT entry_id::text, kind, amount_micros, balance_after_micros FROM statement_entries"
        " WHERE account_id = %s ORDER BY entry_seq", (account_id,)).fetchall()
    usage = conn.execute(
        "SELECT to_char(day, 'YYYY-MM-DD'), product, quantity, amount_micros FROM usage_daily"
        " WHERE account_id = %s", (account_id,)).fetchall()
    holds = conn.execute("SELECT hold_id, amount_micros FROM open_holds WHERE account_id = %s"
                         " ORDER BY hold_id", (account_id,)).fetchall()
    return {
        "balance": None if balance is None else (
            *balance[:4], [(c["grant_id"], c["kind"], c["remaining_micros"]) for c in balance[4]]),
        "statement": [tuple(r) for r in statement],
        "usage": {(d, p): (q, a) for d, p, q, a in usage},
        "holds": [tuple(r) for r in holds],
    }


def assert_projections_match(ledger: Ledger, database_url: str, account_ids: list[UUID]) -> None:
    with psycopg.connect(conninfo(database_url, options="-c search_path=ledger")) as conn:
        for account_id in account_ids:
            assert stored_rows(conn, account_id) == expected_rows(ledger, account_id), account_id
