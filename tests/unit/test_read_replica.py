"""Choosing between the primary and the read replica (services/read_replica.py), with pools
that answer from a script and a clock the test moves: the lag measured by WAL position is
never below the replica's real staleness, a replica past DATABASE_READ_LAG_MAX_S or down sends
reads to the primary, and without a replica nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from services.read_replica import (
    DOWN_RETRY_S,
    LAG_CACHE_S,
    ReadRouting,
    lsn_value,
)


def lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedPool:
    """A pool whose one query answers `row` (or raises `error`), counting the queries."""

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row
        self.error: Exception | None = None
        self.queries = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[ScriptedPool]:
        if self.error is not None:
            raise self.error
        yield self

    async def execute(self, _query: str) -> ScriptedPool:
        self.queries += 1
        return self

    async def fetchone(self) -> tuple[Any, ...]:
        return self.row


def routing(lag_max_s: float = 5.0) -> tuple[ReadRouting, ScriptedPool, ScriptedPool, Clock]:
    primary = ScriptedPool((lsn(100),))
    replica = ScriptedPool((True, lsn(100)))
    clock = Clock()
    return (ReadRouting(primary, replica, lag_max_s=lag_max_s, clock=clock),  # type: ignore[arg-type]
            primary, replica, clock)


def test_lsn_text_orders_as_the_server_does() -> None:
    assert lsn_value("0/0") == 0
    assert lsn_value("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn_value("1/0") > lsn_value("0/FFFFFFFF")


def test_without_a_replica_every_read_goes_to_the_primary_and_says_nothing() -> None:
    primary = ScriptedPool((lsn(1),))
    reads = ReadRouting(primary)  # type: ignore[arg-type]
    route = asyncio.run(reads.route())
    assert route.pool is primary and not route.replica and route.headers() == {}
    assert asyncio.run(reads.replica_if_up()) is None
    assert primary.queries == 0


def test_a_caught_up_replica_serves_reads_with_its_lag() -> None:
    reads, _, replica, _ = routing()
    route = asyncio.run(reads.route())
    assert route.pool is replica and route.replica
    assert route.headers() == {"X-Read-Source": "replica", "X-Replica-Lag-Ms": "0"}


def test_a_replica_that_stopped_replaying_goes_to_the_primary_past_the_bound() -> None:
    reads, primary, replica, clock = routing(lag_max_s=5.0)

    async def scenario() -> list[tuple[bool, float]]:
        seen = []
        for step in range(12):  # the primary writes every second; the replica replays none
            primary.row = (lsn(100 + step),)
            route = await reads.route()
            seen.append((route.replica, route.lag_s))
            clock.now += 1.0
        return seen

    seen = asyncio.run(scenario())
    assert [replica_ for replica_, _ in seen[:6]] == [True] * 6  # lag 0, 1, ... 5 s
    assert [lag for _, lag in seen[:6]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert not any(replica_ for replica_, _ in seen[6:])
    replica.row = (True, lsn(111))  # caught up with the newest write
    route = asyncio.run(reads.route())
    assert route.replica and route.lag_s == 0.0


def test_a_replica_behind_every_remembered_position_has_an_unknown_lag() -> None:
    reads, primary, replica, _ = routing()
    primary.row, replica.row = (lsn(500),), (True, lsn(10))
    route = asyncio.run(reads.route())
    assert not route.replica and route.headers() == {"X-Read-Source": "primary"}


def test_a_replica_that_fails_is_left_alone_for_a_while_then_probed_again() -> None:
    reads, primary, replica, clock = routing()
    replica.error = psycopg.OperationalError("connection refused")
    assert not asyncio.run(reads.route()).replica
    assert asyncio.run(reads.replica_if_up()) is None
    probes = primary.queries
    clock.now += DOWN_RETRY_S / 2
    assert not asyncio.run(reads.route()).replica
    assert primary.queries == probes  # no probe while marked down
    replica.error = None
    clock.now += DOWN_RETRY_S
    assert asyncio.run(reads.route()).replica


def test_a_read_that_fails_on_the_replica_runs_again_on_the_primary() -> None:
    reads, primary, replica, _ = routing()
    pools = []

    async def read(route: Any) -> str:
        pools.append(route.pool)
        if route.pool is replica:
            raise psycopg.OperationalError("server closed the connection")
        return "answer"

    answer, route = asyncio.run(reads.run(read))
    assert answer == "answer" and not route.replica and pools == [replica, primary]
    assert asyncio.run(reads.replica_if_up()) is None  # marked down


def test_one_probe_serves_the_reads_within_the_cache_interval() -> None:
    reads, primary, _, clock = routing()

    async def many() -> None:
        await asyncio.gather(*(reads.route() for _ in range(20)))

    asyncio.run(many())
    assert primary.queries == 1
    clock.now += LAG_CACHE_S / 2
    asyncio.run(reads.route())
    assert primary.queries == 1
    clock.now += LAG_CACHE_S
    asyncio.run(reads.route())
    assert primary.queries == 2


# (seconds until the next read, primary WAL bytes written meanwhile, bytes the replica replays)
steps = st.lists(st.tuples(st.floats(0.01, 2.0), st.integers(0, 50), st.integers(0, 80)),
                 min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_the_measured_lag_is_never_below_the_replicas_real_staleness(
        script: list[tuple[float, int, int]]) -> None:
    """Real staleness: how long ago the primary first held a change the replica has not
    replayed. The measure may overstate it (by up to a probe interval), never understate."""
    reads, primary, replica, clock = routing(lag_max_s=1_000.0)
    position, replayed = 100, 100
    # when the primary's position first passed each value: writes happen just after a step
    history: list[tuple[float, int]] = [(clock.now, position)]

    async def scenario() -> None:
        nonlocal position, replayed
        for wait_s, written, replays in script:
            clock.now += wait_s / 2
            if written:
                position += written
                history.append((clock.now, position))
            clock.now += wait_s / 2
            replayed = min(position, replayed + replays)
            primary.row, replica.row = (lsn(position),), (True, lsn(replayed))
            assert reads.lag is not None
            measured_s = await reads.lag.lag_s()
            missing = [at for at, pos in history if pos > replayed]
            real_s = clock.now - missing[0] if missing else 0.0
            assert measured_s is not None and measured_s >= real_s - 1e-9

    asyncio.run(scenario())
