"""Which ledger process owns which account partitions: leases in PostgreSQL.

The accounts are split into LEDGER_PARTITIONS partitions (contracts/partitioning.py). Each
ledger process is a *member*: it renews a heartbeat row (partition_members) and the leases of
its partitions (partition_leases) every RENEW_INTERVAL_S, each lease good for LEASE_S. Each
tick it works out its fair share, ceil(partitions / live members), then

- gives up partitions above its share (a new member joined): it stops applying them first,
  and only then clears the lease, so the newcomer never overlaps it;
- takes free or expired partitions below its share (a member died or left): an expired lease
  is a dead owner's, since a live one renews long before expiry. Taking one raises the
  partition's fencing epoch.

Self-fencing: a lease renewed by a tick that *started* at local time t is held until t +
LEASE_S on the database's clock at the earliest, so the process stops applying its partitions
itself at t + LEASE_S - FENCE_MARGIN_S unless a later tick renewed them. A process that
cannot reach the database (or stalls) therefore stops before anyone else may take over.
A batch already inside the writer when that happens may still commit; the event store's
optimistic concurrency (and the idempotency keys) is the backstop for that overlap
(tests/integration/test_ledger_partitions.py forces one).

The oldest live member also runs the followers (publisher, projections, anchorer): `leader`.

With several databases (LEDGER_DATABASES) the tables are each database's and a process's
`group` is the partitions of its own: it leases, shares out and leads among its group only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
import structlog

from contracts.partitioning import partition_of
from services.database import conninfo

log = structlog.get_logger(__name__)

LEASE_S: Final = 5.0
RENEW_INTERVAL_S: Final = 1.0
FENCE_MARGIN_S: Final = 1.5
FENCE_CHECK_INTERVAL_S: Final = 0.25
STATEMENT_TIMEOUT_MS: Final = 2_000
MEMBER_FORGET_S: Final = 60  # a dead member's row is deleted this long after it expired


class PartitionCountMismatch(RuntimeError):
    """Another live member runs with a different LEDGER_PARTITIONS."""


def fair_share(partitions: int, members: int) -> int:
    """How many partitions one of `members` live members may hold: ceil(P / members)."""
    return math.ceil(partitions / max(members, 1))


def surplus(owned: Iterable[int], share: int) -> list[int]:
    """The partitions to give up to come down to `share`: the highest-numbered ones."""
    ordered = sorted(owned)
    return ordered[share:] if len(ordered) > share else []


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_counts(database_url: str) -> list[int]:
    """How many partitions each live member holds now, ascending (for tests, benchmarks and
    an operator's look): [8, 8] when two processes share 16 evenly."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        rows = conn.execute("SELECT owner, count(*) FROM ledger.partition_leases"
                            " WHERE expires_at > now() AND owner IS NOT NULL GROUP BY owner"
                            ).fetchall()
    return sorted(int(n) for _, n in rows)


@dataclass(slots=True)
class Tick:
    """What one renewal found: the partitions now held (with their epochs), the share, the
    live members (oldest first)."""

    held: dict[int, int]
    taken: list[int]
    share: int
    members: list[str]


class LeaseTable:
    """The SQL of the leases; synchronous (run in a thread), one connection of its own."""

    def __init__(self, database_url: str, schema: str, member: str, partitions: int,
                 lease_s: float = LEASE_S, group: Sequence[int] | None = None) -> None:
        self.info = conninfo(database_url, options=f"-c search_path={schema} "
                             f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        self.member = member
        self.partitions = partitions
        # The partitions this database holds (LEDGER_DATABASES): all of them without a map.
        # Leases are taken, and the fair share computed, among these only.
        self.group = sorted(group) if group is not None else list(range(partitions))
        self.in_group = frozenset(self.group)
        self.lease = f"{lease_s} seconds"
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = psycopg.connect(self.info, autocommit=True, connect_timeout=2)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def tick(self, wanted: bool = True) -> Tick:
        """Heartbeat, renew what this member holds, take free partitions up to the share."""
        try:
            return self._tick(wanted)
        except Exception:
            self.close()
            raise

    def _tick(self, wanted: bool) -> Tick:
        conn = self._connection()
        with conn.transaction():
            conn.execute(
                "INSERT INTO partition_leases (partition) SELECT unnest(%s::int[])"
                " ON CONFLICT DO NOTHING", (self.group,))
            conn.execute(
                "INSERT INTO partition_members (member, partitions, expires_at)"
                " VALUES (%s, %s, now() + %s::interval) ON CONFLICT (member) DO UPDATE"
                " SET heartbeat_at = now(), expires_at = excluded.expires_at",
                (self.member, self.partitions, self.lease))
            conn.execute("DELETE FROM partition_members WHERE expires_at < now() - %s::interval",
                         (f"{MEMBER_FORGET_S} seconds",))
            rows = conn.execute(
                "SELECT member, partitions FROM partition_members WHERE expires_at > now()"
                " ORDER BY started_at, member").fetchall()
            others = {p for m, p in rows if m != self.member and p != self.partitions}
            if others:
                raise PartitionCountMismatch(
                    f"LEDGER_PARTITIONS is {self.partitions} here but {sorted(others)} in a live"
                    " ledger process; all processes must use the same count")
            members = [m for m, _ in rows]
            # Every unexpired lease of this member, also those its fence stopped locally
            # (the database was away for a few seconds): nobody else can have taken them,
            # so they start again at once instead of after their expiry.
            held = dict(conn.execute(
                "UPDATE partition_leases SET expires_at = now() + %s::interval"
                " WHERE owner = %s AND expires_at > now() RETURNING partition, epoch",
                (self.lease, self.member)).fetchall())
            share = fair_share(len(self.group), len(members)) if wanted else 0
            taken: list[int] = []
            if len(held) < share:
                got = conn.execute(
                    "UPDATE partition_leases SET owner = %s, epoch = epoch + 1,"
                    " expires_at = now() + %s::interval WHERE partition IN ("
                    "  SELECT partition FROM partition_leases"
                    "  WHERE partition = ANY(%s) AND (owner IS NULL OR expires_at <= now())"
                    "  ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING partition, epoch",
                    (self.member, self.lease, self.group, share - len(held))).fetchall()
                for partition, epoch in got:
                    held[partition] = epoch
                    taken.append(partition)
        return Tick(held=held, taken=sorted(taken), share=share, members=members)

    def release(self, partitions: Iterable[int]) -> None:
        """Give partitions up at once (their work is already stopped)."""
        wanted = list(partitions)
        if not wanted:
            return
        try:
            self._connection().execute(
                "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'"
                " WHERE owner = %s AND partition = ANY(%s)", (self.member, wanted))
        except Exception:
            self.close()
            raise

    def leave(self) -> None:
        """At a clean stop: the member row goes, so the others' share grows at once."""
        with contextlib.suppress(Exception):
            self._connection().execute("DELETE FROM partition_members WHERE member = %s",
                                       (self.member,))


PartitionHook = Callable[[int], Awaitable[None]]
LeaderHook = Callable[[bool], Awaitable[None]]


@dataclass(slots=True)
class PartitionOwner:
    """This process's side of the leases: what it owns, and the hooks that start and stop
    the work of a partition (consumers, subscriptions, cache)."""

    table: LeaseTable
    on_acquire: PartitionHook
    on_release: PartitionHook
    on_leader: LeaderHook
    renew_interval_s: float = RENEW_INTERVAL_S
    lease_s: float = LEASE_S
    fence_margin_s: float = FENCE_MARGIN_S
    owned: dict[int, int] = field(default_factory=dict)  # partition -> epoch
    leader: bool = False
    valid_until: float = 0.0  # monotonic: stop everything past this unless renewed
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def partitions(self) -> int:
        return self.table.partitions

    def owns(self, partition: int) -> bool:
        return partition in self.owned and time.monotonic() < self.valid_until

    def owns_all(self) -> bool:
        # Never true for a process of one group of several: it holds its group's only.
        return len(self.owned) == self.partitions and time.monotonic() < self.valid_until

    def in_group(self, partition: int) -> bool:
        """Whether `partition` lives in this process's database (LEDGER_DATABASES)."""
        return partition in self.table.in_group

    def owns_account(self, account_id: Any) -> bool:
        return self.owns(partition_of(account_id, self.partitions))

    async def start(self) -> None:
        """The first tick before returning: a lone process owns every partition at once.
        If the database cannot be reached just now, the process starts owning nothing (what
        it reads is forwarded, and waits for owners) and the renewals take its share later;
        only a partition count that differs from a live peer's refuses the start."""
        try:
            await self.tick()
        except PartitionCountMismatch:
            raise
        except Exception as exc:
            log.warning("partition leases not taken at start; will retry",
                        error=f"{type(exc).__name__}: {exc}")
        self._tasks = [asyncio.create_task(self._renew(), name="partition-leases"),
                       asyncio.create_task(self._fence(), name="partition-fence")]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:
            released = sorted(self.owned)
            await self._drop(released)
            await self._set_leader(False)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.table.release, released)
            await asyncio.to_thread(self.table.leave)
            self.table.close()
        log.info("partitions released at stop", partitions=released)

    async def tick(self) -> None:
        async with self._lock:
            started = time.monotonic()
            result = await asyncio.to_thread(self.table.tick)
            lost = sorted(set(self.owned) - set(result.held))
            if lost:  # expired under us (a long stall): someone may own them now
                log.warning("partition leases lost", partitions=lost)
                await self._drop(lost)
            self.valid_until = started + self.lease_s - self.fence_margin_s
            # Taken now, or held in the database but stopped here by the fence (a renewal
            # that came late): either way the work starts afresh, the cache dropped.
            for partition, epoch in sorted(result.held.items()):
                if partition not in self.owned:
                    self.owned[partition] = epoch
                    log.info("partition acquired", partition=partition, epoch=epoch,
                             share=result.share, members=len(result.members))
                    try:
                        await self.on_acquire(partition)
                    except Exception as exc:  # NATS away, say: give it back, take it later
                        log.warning("partition not started; releasing it", partition=partition,
                                    error=f"{type(exc).__name__}: {exc}")
                        await self._drop([partition])
                        await asyncio.to_thread(self.table.release, [partition])
            give_up = surplus(self.owned, result.share)
            if give_up:
                await self._drop(give_up)
                await asyncio.to_thread(self.table.release, give_up)
                log.info("partitions handed over", partitions=give_up, share=result.share,
                         members=len(result.members))
            await self._set_leader(bool(result.members) and result.members[0] == self.table.member)

    async def _drop(self, partitions: list[int]) -> None:
        """Stop the partitions' work, all at once (each consumer finishes its batch in hand:
        one after another, a handover of 8 took 8 fetch timeouts)."""
        dropped = [p for p in partitions if self.owned.pop(p, None) is not None]
        results = await asyncio.gather(*(self.on_release(p) for p in dropped),
                                       return_exceptions=True)
        for partition, result in zip(dropped, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("partition did not stop cleanly", partition=partition,
                            error=f"{type(result).__name__}: {result}")

    async def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info("followers leader" if leader else "no longer followers leader")
            await self.on_leader(leader)

    async def _renew(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.renew_interval_s)
            if self._stopping.is_set():
                return
            try:
                await self.tick()
            except PartitionCountMismatch as exc:
                log.error("partition count differs between ledger processes", error=str(exc))
            except Exception as exc:
                log.warning("partition lease renewal failed; will retry",
                            error=f"{type(exc).__name__}: {exc}")

    async def _fence(self) -> None:
        """Stop every partition once the leases may have lapsed (renewals failing)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FENCE_CHECK_INTERVAL_S)
            # Not under the lock: a renewal stuck in the database holds it, and that is
            # exactly when the fence must act. owns() is already False past valid_until.
            if self.owned and time.monotonic() >= self.valid_until:
                fenced = sorted(self.owned)
                log.error("partition leases not renewed in time; stopping them",
                          partitions=fenced)
                await self._drop(fenced)
                await self._set_leader(False)
