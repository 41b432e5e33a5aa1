"""A batch of fees charged as ONE FeesCharged event (BillingAccount.charge_fees) against the
same fees charged one FeeCharged event at a time (charge_fee), on twin accounts, for random
batches with repeated keys, fees the funds do not cover, malformed fees and grants due to
expire:

- each fee has the same outcome (charged with the same entry, balance and available after,
  or refused with the same error);
- the statement entries are the same, fee for fee (entry id, amount, balance after, text,
  reference, product, ...): consumers see no difference;
- each charge key is charged at most once, and the fee entries are exactly the fees charged;
- the balance is the replayed sum of the customer's postings, the stored events replay to
  the same state, the chain verifies, and the events survive the mapper's round trip.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_service.app.ledger import LedgerApplication, project
from ledger_service.domain import BillingAccount, LedgerError
from ledger_service.domain.chain import verify_chain
from ledger_service.domain.fees import FeeCharge
from ledger_service.domain.postings import customer_balance_micros, replay_postings
from ledger_service.projections.statement import statement_entries

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
CHARGED_AT = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)  # after the short grants expire
POUND = 1_000_000

fees = st.lists(st.tuples(
    st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6", "bad key"]),  # repeats, one malformed
    st.integers(1, 3),  # quantity
    st.sampled_from([0, 250_000, POUND, 3 * POUND]),  # unit price
    st.sampled_from([None, 1, 17, 30]),  # days of a 30-day period (None: charged whole)
), min_size=1, max_size=12)
grants = st.lists(st.tuples(st.sampled_from(["purchased", "bonus", "signup_promo"]),
                            st.sampled_from([POUND, 2 * POUND, 5 * POUND]),
                            st.booleans()),  # expires before CHARGED_AT
                  max_size=3)


def twin_accounts(account_type: str, granted: list[tuple[str, int, bool]],
                  closed: bool) -> tuple[BillingAccount, BillingAccount]:
    account_id = uuid4()
    twins = []
    for _ in range(2):
        account = BillingAccount.open(account_id, T0, account_type=account_type,
                                      credit_limit_micros=POUND if account_type == "postpay"
                                      else 0, low_balance_threshold_micros=POUND)
        for n, (kind, amount, expires) in enumerate(granted):
            account.grant(f"g{n}", kind, amount, T0,
                          expires_at=T0 + timedelta(days=2) if expires else None)
        if closed:
            account.close(T0)
        twins.append(account)
    return twins[0], twins[1]


def fee_charges(drawn: list[tuple[str, int, int, int | None]]) -> list[FeeCharge]:
    return [FeeCharge(charge_key=f"recurring:{key}:2026-11" if key != "bad key" else key,
                      product="vmn", quantity=quantity, unit_price_micros=price,
                      reference=f"+4477009001{n:02d}", period="2026-11", days=days,
                      days_in_period=30 if days is not None else None)
            for n, (key, quantity, price, days) in enumerate(drawn)]


def outcome(result: Any) -> Any:
    return (type(result).__name__, str(result)) if isinstance(result, LedgerError) else result


def fee_entries(events: list[Any]) -> list[tuple[Any, ...]]:
    """Every statement entry of the events, without its line in the event."""
    return [entry._replace(line=0) for event in events for entry in statement_entries(event)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(account_type=st.sampled_from(["prepay", "trial", "postpay"]), granted=grants,
       drawn=fees, closed=st.sampled_from([False] * 9 + [True]))
def test_a_batch_of_fees_is_the_fees_charged_one_at_a_time(
        account_type: str, granted: list[tuple[str, int, bool]],
        drawn: list[tuple[str, int, int, int | None]], closed: bool) -> None:
    one_by_one, batched = twin_accounts(account_type, granted, closed)
    history = list(one_by_one.collect_events())
    assert len(list(batched.collect_events())) == len(history)
    charges = fee_charges(drawn)

    singles: list[Any] = []
    for charge in charges:
        try:
            singles.append(one_by_one.charge_fee(charge, CHARGED_AT))
        except LedgerError as exc:
            singles.append(exc)
    together = batched.charge_fees(charges, CHARGED_AT)

    assert [outcome(r) for r in together] == [outcome(r) for r in singles]
    single_events = list(one_by_one.collect_events())
    batch_events = list(batched.collect_events())
    assert fee_entries(batch_events) == fee_entries(single_events)
    names = [type(e).__name__ for e in batch_events]
    assert "FeeCharged" not in names and names.count("FeesCharged") <= 1
    assert (batched.balance_micros, batched.available_micros, batched.grants) == (
        one_by_one.balance_micros, one_by_one.available_micros, one_by_one.grants)

    # each key charged at most once; the fee entries are exactly the fees charged
    charged = [r for r in together if not isinstance(r, LedgerError)]
    fee_lines = [e for e in fee_entries(batch_events) if e.kind == "fee"]
    assert [e.entry_id for e in fee_lines] == [r.entry_id for r in charged]
    assert len({e.entry_id for e in fee_lines}) == len(fee_lines)
    assert sum(e.amount_micros for e in fee_lines) == sum(r.amount_micros for r in charged)

    # the balance is the replayed postings; the log replays to the same account and verifies
    log = history + batch_events
    assert customer_balance_micros(replay_postings(log), batched.id) == batched.balance_micros
    replayed = project(None, log)
    replayed.check_invariants()
    assert (replayed.balance_micros, replayed.grants, replayed.version) == (
        batched.balance_micros, batched.grants, batched.version)
    assert verify_chain(log) == []
    for key in {c.charge_key for c in charges}:
        assert replayed.was_fee_charged(key) == batched.was_fee_charged(key)


def test_a_fees_charged_event_round_trips_through_the_mapper() -> None:
    app = LedgerApplication(env={"MAPPER_TOPIC": "ledger_service.projections.decoding:FastMapper"})
    try:
        account = BillingAccount.open(uuid4(), T0, account_type="postpay",
                                      credit_limit_micros=POUND)
        account.charge_fees(fee_charges([("k1", 1, POUND, None), ("k2", 2, POUND, 17)]),
                            CHARGED_AT)
        (event,) = [e for e in account.pending_events
                    if type(e) is BillingAccount.FeesCharged]
        stored = app.mapper.to_stored_event(event)
        assert stored.topic == "ledger.account.FeesCharged"
        decoded = app.mapper.to_domain_event(stored)
        assert type(decoded) is BillingAccount.FeesCharged
        assert vars(decoded) == vars(event)
        assert isinstance(decoded.originator_id, UUID)
    finally:
        app.close()
