"""Balances as of a past instant equal the replay of the events recorded before it.

Three answers must agree at random instants: ledgerctl's replay from the log alone, the
balance route's ``?as_of=`` (the repository, snapshots included), and the statement: the sum of
the amounts of the entries recorded by then.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_service.app.ledger import AccountNotFound
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.replay import replay_account
from ledger_service.projections.runner import connector
from ledger_service.projections.statement import statement_entries
from ledger_service.reader import account_as_of
from tests.conftest import Infra
from tests.integration.test_projections_workload import Clock, Workload, build, commands

pytestmark = pytest.mark.integration


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.integers(3, 40),
       instants=st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_as_of_balances_equal_the_replay_of_the_events_before_them(
        infra: Infra, seed: int, steps: int, instants: list[float]) -> None:
    rng = random.Random(seed)
    clock = Clock()
    ledger = build(infra.database_url, clock)
    try:
        workload = Workload(ledger, clock)
        account_id = workload.open(rng.choice(["trial", "prepay", "postpay"]))
        start = clock.now
        workload.grant(0, "purchased", "3.00")
        for name, args in commands(rng, steps):  # one account: every index picks it
            clock.advance(rng.choice([0.001, 1, 30]))
            getattr(workload, name)(*args)
        end = clock.now + timedelta(seconds=1)
        events = list(ledger.app.events.get(account_id))
        decoder = EventDecoder(ledger.app.mapper)
        with connector(infra.database_url)() as conn:
            moments = [start + (end - start) * f for f in instants]
            moments += [events[rng.randrange(len(events))].timestamp]  # exactly at an event
            for moment in moments:
                before = [e for e in events if e.timestamp <= moment]
                replayed = replay_account(conn, decoder, account_id, moment)
                assert replayed is not None and replayed.events == len(before)
                routed = account_as_of(ledger, account_id, moment)
                assert routed.version == replayed.account.version == len(before)
                for attribute in ("balance_micros", "available_micros", "held_micros"):
                    assert getattr(routed, attribute) == getattr(replayed.account, attribute)
                assert routed.grants == replayed.account.grants
                stated = sum(entry.amount_micros for e in before for entry in statement_entries(e))
                assert stated == replayed.account.balance_micros
            assert replay_account(conn, decoder, account_id, start - timedelta(seconds=1)) is None
            with pytest.raises(AccountNotFound):
                account_as_of(ledger, account_id, start - timedelta(seconds=1))
    finally:
        ledger.app.close()
