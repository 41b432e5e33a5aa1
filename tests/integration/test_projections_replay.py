"""The projections equal a replay of the log: after a script that records every event type,
after random command sequences caught up in random batch sizes, and according to `verify`."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_service.app.ledger import Ledger
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.runner import connector
from ledger_service.projections.verify import verify
from tests.conftest import Infra
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    assert_projections_match,
    build,
    commands,
    run_commands,
    runner_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def workload(infra: Infra) -> Iterator[Workload]:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    try:
        yield Workload(ledger, clock)
    finally:
        ledger.app.close()


def verify_accounts(ledger: Ledger, database_url: str, workload: Workload) -> None:
    with connector(database_url)() as conn:
        for account_id in workload.accounts:
            report = verify(conn, EventDecoder(ledger.app.mapper), account_id=account_id)
            assert report.ok, report.divergences
            assert report.events > 0


def test_every_event_type_lands_in_the_projections_as_the_replay_says(
        infra: Infra, workload: Workload) -> None:
    workload.every_kind()
    runner = runner_for(workload.ledger, infra.database_url)
    try:
        assert runner.catch_up() > 0
        assert runner.catch_up() == 0  # a second pass finds nothing: exactly once
    finally:
        runner.close()
    assert_projections_match(workload.ledger, infra.database_url, workload.accounts)
    verify_accounts(workload.ledger, infra.database_url, workload)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), steps=st.integers(5, 60),
       account_types=st.lists(st.sampled_from(["trial", "prepay", "postpay"]), min_size=1,
                              max_size=4),
       batch_size=st.integers(1, 50), catch_up_every=st.integers(1, 20))
def test_projections_equal_a_replay_after_random_command_sequences(
        infra: Infra, seed: int, steps: int, account_types: list[str], batch_size: int,
        catch_up_every: int) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    runner = runner_for(ledger, infra.database_url, batch_size=batch_size)
    try:
        workload = Workload(ledger, clock)
        for account_type in account_types:
            workload.open(account_type)
            workload.grant(len(workload.accounts) - 1, "purchased", "5.00")
        script = commands(random.Random(seed), steps)
        for start in range(0, len(script), catch_up_every):
            run_commands(workload, script[start:start + catch_up_every])
            runner.step()  # one batch now and then: the projections trail the log
        runner.catch_up()
        assert_projections_match(ledger, infra.database_url, workload.accounts)
        verify_accounts(ledger, infra.database_url, workload)
    finally:
        runner.close()
        ledger.app.close()


def test_two_runners_on_one_database_apply_each_event_once(infra: Infra,
                                                           workload: Workload) -> None:
    """Two service processes each run a runner: their batches take turns under the lock and
    each re-reads the positions, so nothing is applied twice."""
    workload.every_kind()
    first = runner_for(workload.ledger, infra.database_url, batch_size=3)
    second = runner_for(workload.ledger, infra.database_url, batch_size=5)
    try:
        while first.step().notifications + second.step().notifications:
            pass
    finally:
        first.close()
        second.close()
    assert_projections_match(workload.ledger, infra.database_url, workload.accounts)
