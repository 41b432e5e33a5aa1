"""POST /v1/charges' use case over real PostgreSQL (accounts.charge_fees): an account's fees
of a batch are one FeesCharged event, its cold accounts are loaded in one query
(Ledger.load_many), and exactly once per charge key holds for random batches with repeated
keys, retried batches, batches partly repeating earlier keys and fees the funds do not
cover."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.http.ledger import AccountFee, ChargeFees, FeeOutcomes, GrantCredit, OpenAccount, Tax
from contracts.money import to_micros
from ledger_service.app import accounts
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import Ledger
from ledger_service.domain import BillingAccount
from ledger_service.domain.postings import customer_balance_micros, replay_postings
from ledger_service.projections.statement import statement_entries

pytestmark = pytest.mark.integration

VMN_MICROS = 2_000_000  # the catalogue's monthly price of a UK number (starter, GBP)


def opened(ledger: Ledger, account_type: str, credit: str | None) -> uuid.UUID:
    account_id = uuid.uuid4()
    body = OpenAccount(account_id=account_id, type=account_type, currency="GBP",  # type: ignore[arg-type]
                       tax=Tax(country="GB"),
                       credit_limit="10.00" if account_type == "postpay" else None)
    accounts.open_account(ledger, body, Idempotency("http:open", None, "h"))
    if credit is not None:
        accounts.grant_credit(ledger, account_id,
                              GrantCredit(kind="purchased", amount=credit, reason="test"),
                              "tester", Idempotency("http:grant", None, "h"))
    return account_id


def fee(account_id: uuid.UUID, key: str, product: str = "vmn") -> AccountFee:
    return AccountFee(account_id=account_id, charge_key=key, product=product, quantity=1,
                      reference="+447700900123", period="2026-12")


def charge(ledger: Ledger, fees: list[AccountFee]) -> FeeOutcomes:
    return msgspec.json.decode(accounts.charge_fees(ledger, ChargeFees(charges=fees)),
                               type=FeeOutcomes)


def stored_events(ledger: Ledger, account_id: uuid.UUID) -> list[Any]:
    return list(ledger.app.events.get(account_id))


def test_an_accounts_fees_of_a_batch_are_one_event_with_an_entry_each(ledger: Ledger) -> None:
    rich, poor = opened(ledger, "prepay", "10.00"), opened(ledger, "prepay", "3.00")
    ledger.evict([rich, poor])  # cold: load_many reads them
    keys = [f"recurring:{uuid.uuid4()}:2026-12" for _ in range(3)]
    outcomes = charge(ledger, [fee(rich, keys[0]), fee(poor, keys[0]), fee(rich, keys[1]),
                               fee(poor, keys[1]), fee(rich, keys[2]), fee(rich, keys[0])])
    assert [r.outcome for r in outcomes.results] == [
        "charged", "charged", "charged", "refused", "charged", "charged"]
    assert outcomes.results[5].fee == outcomes.results[0].fee  # the repeat answers the first
    events = stored_events(ledger, rich)
    assert [type(e).__name__ for e in events].count("FeesCharged") == 1
    fees_event = events[-1]
    assert isinstance(fees_event, BillingAccount.FeesCharged)
    entries = statement_entries(fees_event)
    assert [e.entry_id for e in entries] == [r.fee.entry_id for r in outcomes.results  # type: ignore[union-attr]
                                             if r.account_id == rich][:3]
    assert [e.balance_after_micros for e in entries] == [8_000_000, 6_000_000, 4_000_000]
    assert [(r.fee.balance_after, r.fee.amount) for r in outcomes.results[:3:2]] == [  # type: ignore[union-attr]
        ("8.00", "2.00"), ("6.00", "2.00")]
    indexed = ledger.query("SELECT kind, count(*) FROM {schema}.entry_index"
                           " WHERE account_id = %s GROUP BY kind ORDER BY kind", (rich,))
    assert dict(indexed)["FeeCharged"] == 3 and "usage" not in dict(indexed)


def test_load_many_builds_what_load_builds_and_load_then_reads_the_cache(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.app.snapshotting_intervals = {BillingAccount: 3}  # snapshots and events after them
    ids = [opened(ledger, "postpay", None) for _ in range(3)] + [opened(ledger, "prepay", "50")]
    for n in range(4):
        charge(ledger, [fee(a, f"k{n}-{i}") for a in ids for i in range(n + 1)])
    expected = {}
    for account_id in ids:
        ledger.evict([account_id])
        expected[account_id] = vars(ledger.load(account_id)).copy()
    ledger.evict(ids)
    missing = uuid.uuid4()
    ledger.load_many([*ids, missing, ids[0]])

    def no_store_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("an account was read from the store again")

    monkeypatch.setattr(ledger.app.repository, "_reconstruct_aggregate", no_store_reads)
    for account_id in ids:
        assert vars(ledger.load(account_id)) == expected[account_id]
    monkeypatch.undo()
    with pytest.raises(accounts.AccountNotFound):
        ledger.load(missing)


# Each example: three accounts (a poor prepay, a rich prepay, a postpay) and an unknown one;
# batches drawn over a few keys per account, some sent twice (a retry), later ones repeating
# earlier keys, some with an unknown product.
batches = st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.booleans()),
                            min_size=1, max_size=12),
                   min_size=1, max_size=4)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=batches, retried=st.lists(st.booleans(), min_size=4, max_size=4))
def test_random_batches_charge_each_key_once_and_the_balance_is_the_log(
        ledger: Ledger, drawn: list[list[tuple[int, int, bool]]], retried: list[bool]) -> None:
    poor, rich = opened(ledger, "prepay", "5.00"), opened(ledger, "prepay", "100.00")
    postpay = opened(ledger, "postpay", None)
    ids = [poor, rich, postpay, uuid.uuid4()]
    prefix = uuid.uuid4().hex[:8]
    answers: dict[tuple[uuid.UUID, str], Any] = {}
    for n, batch in enumerate(drawn):
        ledger.evict(ids[:3])  # some batches cold, some warm
        fees = [fee(ids[a], f"{prefix}:{k}", "vmn" if known else "nope")
                for a, k, known in batch]
        for _ in range(2 if retried[n] else 1):
            for sent, result in zip(fees, charge(ledger, fees).results, strict=True):
                if result.outcome == "charged":
                    first = answers.setdefault((sent.account_id, sent.charge_key), result.fee)
                    assert result.fee == first  # a key is charged once; repeats answer it
                elif result.outcome == "refused":
                    assert sent.account_id == poor and result.problem_type == "insufficient-funds"
                else:  # only the unknown account and the unknown product are rejected
                    assert result.problem_type in ("account-not-found", "unknown-product")
                    assert sent.product == "nope" or sent.account_id == ids[3]
    for account_id, credit in ((poor, 5_000_000), (rich, 100_000_000), (postpay, 0)):
        events = stored_events(ledger, account_id)
        fee_entries = [e for event in events for e in statement_entries(event) if e.kind == "fee"]
        charged = {key: view for (a, key), view in answers.items() if a == account_id}
        # statement lines == fees charged, one per key
        assert Counter(e.entry_id for e in fee_entries) == Counter(
            v.entry_id for v in charged.values())
        assert not any(type(e).__name__ == "FeeCharged" for e in events)
        # the balance is the replayed postings and the credit less the fees charged
        ledger.evict([account_id])
        account = ledger.load(account_id)
        assert account.balance_micros == customer_balance_micros(replay_postings(events),
                                                                 account_id)
        assert account.balance_micros == credit - sum(
            to_micros(v.amount) for v in charged.values())
        assert account.balance_micros >= 0 or account_id == postpay
        assert len(charged) * VMN_MICROS == credit - account.balance_micros
