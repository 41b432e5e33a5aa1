"""Statement entries and fast decoding against random command sequences on the pure aggregate.

- Each entry's balance_after is the previous entry's plus its amount, starting from zero, and
  the last one equals the replayed balance: the statement explains the balance to the micro.
- The projections' fast decoder, and the ledger's mapper (FastMapper), build exactly the
  event the library's mapper builds, and FastMapper stores exactly the state it stores.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_service.domain import BillingAccount, LedgerError, UsageLine, debit_refs_of
from ledger_service.domain.fees import FeeCharge
from ledger_service.projections.decoding import EventDecoder, FastMapper, StoredRow
from ledger_service.projections.statement import statement_entries

T0 = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
KINDS = ("signup_promo", "mobile_verification", "referral", "purchased", "bonus", "compensation")
amounts = st.sampled_from([1, 39_500, 250_000, 1_000_000, 5_000_000])


class Driver:
    """Plays commands on one account, ignoring the ones the domain refuses."""

    def __init__(self, account_type: str) -> None:
        self.now = T0
        self.account = BillingAccount.open(uuid4(), T0, account_type=account_type,
                                           credit_limit_micros=2_000_000 if account_type ==
                                           "postpay" else 0,
                                           low_balance_threshold_micros=500_000)
        self.events: list[Any] = []
        self.holds: list[str] = []
        self.debits: list[Any] = []
        self.payments: list[str] = []
        self.n = 0
        self.collect()

    def collect(self) -> None:
        """Take the account's new events."""
        for event in self.account.collect_events():
            self.events.append(event)
            self.debits.extend(debit_refs_of(event))

    def tick(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def key(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def play(self, name: str, a: int, b: int) -> None:
        account, now = self.account, self.tick()
        try:
            if name == "grant":
                expires = now + timedelta(seconds=b * 10) if b % 2 else None
                account.grant(self.key("g"), KINDS[b % len(KINDS)], a, now, expires_at=expires)
            elif name == "pay":
                payment = self.key("p")
                account.purchase_credit(payment, "stripe", a, account.currency, now,
                                        purpose="invoice" if b % 3 == 0 else "topup")
                self.payments.append(payment)
            elif name == "authorize":
                hold = self.key("h")
                account.authorize(hold, hold, "sms", 1 + b % 3, 39_500,
                                  now + timedelta(seconds=5 + b), now)
                self.holds.append(hold)
            elif name == "usage":
                lines = [UsageLine(self.key("u"), "sms", 1 + (a + i) % 3, 39_500,
                                   "failed" if (b + i) % 5 == 0 else "submitted", now,
                                   hold_id=self.holds.pop(0) if self.holds and i == 0 else None)
                         for i in range(1 + b % 4)]
                account.record_usage(lines, now)
            elif name == "release" and self.holds:
                account.release_hold(self.holds.pop(), now)
            elif name == "refund" and self.debits:
                debit = self.debits[b % len(self.debits)]
                account.refund(self.key("r"), debit, None if a % 2 else min(a, debit.amount_micros),
                               "because", "ops", now)
            elif name == "adjust":
                account.adjust(self.key("a"), "credit" if b % 2 else "debit", a,
                               "an operator's correction", "ops", now)
            elif name == "reverse" and self.payments:
                account.reverse_payment(self.payments[0], "stripe", a, now, reason="chargeback")
            elif name == "expire":
                now = self.tick(a % 100)
                account.expire_holds(now)
                account.expire_grants(now)
            elif name == "fee":
                account.charge_fee(FeeCharge(self.key("f"), "vmn", 1, a, period="2026-02"), now)
            elif name == "fees":  # one FeesCharged event; a repeated key; maybe refused ones
                keys = [self.key("f") for _ in range(1 + b % 4)]
                keys += keys[:1] if b % 3 == 0 else []
                account.charge_fees([FeeCharge(k, "vmn", 1 + i % 2, a, reference=f"+44{i}",
                                               period="2026-02", days=1 + b % 28 if i % 2 else None,
                                               days_in_period=28 if i % 2 else None)
                                     for i, k in enumerate(keys)], now)
            elif name == "convert":
                account.change_type("prepay", now)
            elif name == "close":
                account.close(now)
        except LedgerError:
            pass
        self.collect()


command = st.tuples(
    st.sampled_from(["grant", "grant", "pay", "authorize", "usage", "usage", "usage", "release",
                     "refund", "adjust", "reverse", "expire", "fee", "fees", "fees", "convert",
                     "close"]),
    amounts, st.integers(0, 50))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(account_type=st.sampled_from(["trial", "prepay", "postpay"]),
       script=st.lists(command, min_size=1, max_size=40))
def test_every_entry_explains_the_balance_after_it(account_type: str,
                                                   script: list[tuple[str, int, int]]) -> None:
    driver = Driver(account_type)
    for name, a, b in script:
        driver.play(name, a, b)
    replayed: BillingAccount | None = None
    running = 0
    for event in driver.events:
        replayed = event.mutate(replayed)
        assert replayed is not None
        entries = statement_entries(event)
        for entry in entries:
            running += entry.amount_micros
            assert entry.balance_after_micros == running, (type(event).__name__, entry)
            # A free fee (a zero price, or prorated below half a micro-unit) is still a line
            # of its own, as one FeeCharged event always made one; other entries move money.
            assert entry.amount_micros != 0 or entry.kind == "fee"
        if entries:
            assert running == replayed.balance_micros
    assert running == driver.account.balance_micros


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(account_type=st.sampled_from(["trial", "prepay", "postpay"]),
       script=st.lists(command, min_size=1, max_size=30))
def test_the_fast_decoder_builds_what_the_mapper_builds(account_type: str,
                                                        script: list[tuple[str, int, int]]) -> None:
    driver = Driver(account_type)
    for name, a, b in script:
        driver.play(name, a, b)
    app: Application[UUID] = Application()
    try:
        decoder = EventDecoder(app.mapper)
        fast_mapper = FastMapper(transcoder=app.mapper.transcoder)
        for position, event in enumerate(driver.events, start=1):
            stored: StoredEvent = app.mapper.to_stored_event(event)
            row = StoredRow(position, stored.originator_id, stored.originator_version,  # type: ignore[arg-type]
                            stored.topic, stored.state)
            slow = app.mapper.to_domain_event(stored)
            for fast in (decoder.decode(row), fast_mapper.to_domain_event(stored)):
                assert type(fast) is type(slow)
                assert vars(fast) == vars(slow)
            # and FastMapper stores the bytes the library's transcoder writes
            assert fast_mapper.to_stored_event(event).state == stored.state
    finally:
        app.close()
