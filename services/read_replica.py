"""Reads that may go to a streaming read replica of the service's database
(DATABASE_READ_URL; docs/design.md "Reads", docs/operations.md "A read replica").

Two kinds of read use it, with different freshness rules:

- Reads that prove their own freshness (the ledger's balance and account reads) compare what
  the replica has with the account's newest version read from the primary, so they may use
  the replica whatever its lag (`ReadRouting.replica_if_up`).
- Lag-bounded reads (statement pages, usage, CSV, audit events, invoice and payment lists)
  answer "as of the replica's position": they go to the replica only while its lag is at most
  DATABASE_READ_LAG_MAX_S, and to the primary otherwise (`ReadRouting.route`).

The lag is measured by LSN, not by ``now() - pg_last_xact_replay_timestamp()``: that one
grows while the primary is idle (nothing to replay) and cannot tell an idle primary from a
replica that stopped receiving. Here each probe first reads the primary's WAL insert position
and remembers it with the time it was read; then the replica's replay position. Every
transaction that committed on the primary before a sample was taken has its commit record
below that sample's position, so once the replica has replayed past it, the replica holds
everything committed before the sample's time. The lag is the age of the newest sample the
replica has passed (aged by the time since the probe while it is reused): an upper bound,
never an underestimate; it may overstate by up to a probe interval. A
replica behind every remembered sample has an unknown lag and is treated as too far behind.

A probe is two cheap queries, at most once per LAG_CACHE_S (concurrent reads share it). A
replica that does not answer (down, unreachable, refusing) is marked down for DOWN_RETRY_S:
reads go to the primary meanwhile, and a read that fails on the replica is run again on the
primary. Without DATABASE_READ_URL nothing here touches a second server: every read goes to
the primary pool, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

T = TypeVar("T")
# How long one lag measurement is used before the next read probes again.
LAG_CACHE_S: Final = 0.1
# A replica that failed to answer is left alone this long (reads go to the primary).
DOWN_RETRY_S: Final = 1.0
# A probe (or a connection from the replica's pool) that takes longer counts as a failure.
PROBE_TIMEOUT_S: Final = 1.0
# Bound on the remembered primary positions (one per probe: 10 a second while reads come).
SAMPLES_MAX: Final = 4_096
UNKNOWN_LAG_S: Final = float("inf")

_PRIMARY_POSITION: Final = "SELECT pg_current_wal_insert_lsn()::text"
_REPLICA_POSITION: Final = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"


def lsn_value(text: str) -> int:
    """A pg_lsn's text ('16/B374D848') as an integer, for comparing positions."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class ReplicaUnavailable(Exception):
    """The replica did not answer; the caller reads from the primary instead."""


# What a read on the replica may fail with that the primary would not: the server gone or
# unreachable (OperationalError, PoolTimeout is one), or a query cancelled by a recovery
# conflict (the standby replaying a change that removes rows the query still needed).
REPLICA_ERRORS: Final = (psycopg.OperationalError, psycopg.errors.SerializationFailure,
                         TimeoutError)


@dataclass(frozen=True, slots=True)
class ReadRoute:
    """Where a lag-bounded read goes, and how stale it may be."""

    pool: AsyncConnectionPool
    replica: bool
    lag_s: float  # 0 on the primary; on the replica an upper bound on its staleness
    configured: bool  # False: no DATABASE_READ_URL, no headers (as before)

    def headers(self) -> dict[str, str]:
        if not self.configured:
            return {}
        if not self.replica:
            return {"X-Read-Source": "primary"}
        return {"X-Read-Source": "replica", "X-Replica-Lag-Ms": str(round(self.lag_s * 1000))}


class ReplicaLag:
    """The replica's lag behind the primary, measured by WAL position (see the module)."""

    def __init__(self, primary: AsyncConnectionPool, replica: AsyncConnectionPool, *,
                 window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.replica = replica
        self.window_s = window_s  # samples older than this cannot make a read eligible
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque(maxlen=SAMPLES_MAX)
        self._lag_s: float | None = None  # None: down
        self._valid_until = float("-inf")
        self._measured_at = 0.0
        self._lock = asyncio.Lock()

    async def lag_s(self) -> float | None:
        """The replica's lag in seconds (inf: unknown, treat as too far behind); None while
        it is down."""
        if self.clock() >= self._valid_until:
            async with self._lock:
                if self.clock() >= self._valid_until:  # not refreshed while we waited
                    await self._probe()
        if self._lag_s is None:
            return None
        # A measurement ages: between probes the lag may have grown by as much as the time
        # since, so it stays an upper bound.
        return self._lag_s + max(0.0, self.clock() - self._measured_at)

    def mark_down(self, reason: str) -> None:
        if self._lag_s is not None:
            log.warning("read replica unavailable: reads go to the primary", reason=reason)
        self._lag_s = None
        self._valid_until = self.clock() + DOWN_RETRY_S

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                async with self.primary.connection() as conn:
                    cur = await conn.execute(_PRIMARY_POSITION)
                    row = await cur.fetchone()
                sampled_at = self.clock()
                assert row is not None
                self._remember(sampled_at, lsn_value(row[0]))
                async with self.replica.connection() as conn:
                    cur = await conn.execute(_REPLICA_POSITION)
                    replica_row = await cur.fetchone()
        except REPLICA_ERRORS as exc:
            self.mark_down(type(exc).__name__)
            return
        assert replica_row is not None
        in_recovery, replayed = replica_row
        now = self.clock()
        # Not in recovery: DATABASE_READ_URL names a primary (this one, or a promoted
        # standby), which is the newest there is.
        lag_s = self._lag_behind(lsn_value(replayed), now) \
            if in_recovery and replayed is not None else 0.0
        if self._lag_s is None:
            log.info("read replica available", lag_ms=None if lag_s == UNKNOWN_LAG_S
                     else round(lag_s * 1000))
        self._lag_s, self._measured_at = lag_s, now
        self._valid_until = now + LAG_CACHE_S

    def _remember(self, sampled_at: float, position: int) -> None:
        while self._samples and self._samples[0][0] < sampled_at - self.window_s:
            self._samples.popleft()
        self._samples.append((sampled_at, position))

    def _lag_behind(self, replayed: int, now: float) -> float:
        for sampled_at, position in reversed(self._samples):
            if position <= replayed:
                return max(0.0, now - sampled_at)
        return UNKNOWN_LAG_S


class ReadRouting:
    """The primary pool, and the replica's when DATABASE_READ_URL is set, with the rules for
    choosing between them."""

    def __init__(self, primary: AsyncConnectionPool, replica: AsyncConnectionPool | None = None,
                 *, lag_max_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.replica = replica
        self.lag_max_s = lag_max_s
        # Remember twice the allowed lag: enough to tell "within the bound" from "beyond it".
        self.lag = None if replica is None else ReplicaLag(
            primary, replica, window_s=2 * lag_max_s + 1, clock=clock)

    @property
    def configured(self) -> bool:
        return self.replica is not None

    async def open(self) -> None:
        """The replica's pool opens in the background: a replica that is down at start-up
        must not stop the service (reads go to the primary until it answers)."""
        if self.replica is not None:
            await self.replica.open(wait=False)

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.close()

    def primary_route(self) -> ReadRoute:
        return ReadRoute(self.primary, False, 0.0, self.configured)

    async def route(self) -> ReadRoute:
        """For a lag-bounded read: the replica while its lag is within the bound."""
        if self.lag is None or self.replica is None:
            return self.primary_route()
        lag_s = await self.lag.lag_s()
        if lag_s is None or lag_s > self.lag_max_s:
            return self.primary_route()
        return ReadRoute(self.replica, True, lag_s, True)

    async def replica_if_up(self) -> AsyncConnectionPool | None:
        """For a read that proves its own freshness: the replica whenever it answers."""
        if self.lag is None or self.replica is None:
            return None
        return self.replica if await self.lag.lag_s() is not None else None

    def replica_failed(self, exc: BaseException) -> None:
        if self.lag is not None and isinstance(exc, psycopg.OperationalError | TimeoutError):
            self.lag.mark_down(type(exc).__name__)
        else:
            log.info("read on the replica failed: read again on the primary",
                     error=type(exc).__name__)

    async def run(self, read: Callable[[ReadRoute], Awaitable[T]]) -> tuple[T, ReadRoute]:
        """A lag-bounded read: on the replica when it may, again on the primary when the
        replica fails under it."""
        route = await self.route()
        if not route.replica:
            return await read(route), route
        try:
            return await read(route), route
        except REPLICA_ERRORS as exc:
            self.replica_failed(exc)
        route = self.primary_route()
        return await read(route), route
