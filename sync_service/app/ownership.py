"""Which sync process drains which connection: leases in PostgreSQL, so that a connection's
limits (Xero's per organisation, HubSpot's per account) hold however many processes run.

The limits are enforced by the process's own pacer (app/pacing.py), with no database round
trip per call; that is only right if one process at a time calls a connection. So each sync
process is a *member* (a heartbeat row in sync_members) and each connection with work has a
lease row (connection_leases) held by at most one member. Every RENEW_INTERVAL_S a member

- renews its member row and its leases, writing each connection's pacing state into its row;
- works out its fair share, ceil(connections with work / live members);
- hands over connections above its share (a member joined) and those with no work left: it
  stops their lanes first (no new change starts; the pushes in hand finish), and only at a
  later tick, once they have stopped, clears the lease with the final pacing state, so the
  next owner never overlaps it;
- takes free or expired leases of connections with work, up to its share. An expired lease
  is a dead member's (a live one renews long before expiry). The new owner starts the
  connection's pacer from the row's state, aged by the database's clock: the spacing of the
  calls, the daily budget and a 429's pause continue across the handover.

A tick also runs as soon as work appears for a connection that had none at the last tick
(`work_seen`, called by the scheduler for every due connection it does not own), at most
every NUDGE_MIN_INTERVAL_S: an organisation's first change waits milliseconds for its
owner, not up to a renewal interval. (Before, organisations started 1.4-3 s late at the
start of a drain, as the work appeared between once-a-second ticks.)

Self-fencing: a lease renewed by a tick that started at local time t is held until t +
LEASE_S on the database's clock at the earliest, so `owns` turns false at t + LEASE_S -
FENCE_MARGIN_S unless a later tick renewed it; the lanes then start no new change, and the
Xero pacer refuses any further call to the organisation (`Pacer.may_call`; the change is
retried later, not lost). A process that cannot reach the database (or stalls) thus stops
calling before anyone may take over.

The ledger's partition leases (ledger_service/partitions.py) are the model; the differences:
the set of leases is the connections with work, not a fixed count, and a lease carries the
pacing state.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import psycopg
import structlog
from psycopg.types.json import Jsonb

from services.database import conninfo

log = structlog.get_logger(__name__)

LEASE_S: Final = 10.0
RENEW_INTERVAL_S: Final = 1.0
FENCE_MARGIN_S: Final = 3.0
STATEMENT_TIMEOUT_MS: Final = 2_000
MEMBER_FORGET_S: Final = 60  # a dead member's row is deleted this long after it expired
NUDGE_MIN_INTERVAL_S: Final = 0.1  # ticks brought forward by new work: at most this often


def fair_share(connections: int, members: int) -> int:
    """How many connections with work one of `members` live members may hold."""
    return math.ceil(connections / max(members, 1))


def surplus_slack(share: int) -> int:
    """How far above its share a member may stay before it hands connections over. Without
    it, organisations finishing their work unevenly moved connections back and forth near
    the end of a drain, and each move paused that organisation for a few seconds (its lane
    stopped, its lease cleared at the next tick, taken at the other member's next tick). A
    member joining still takes effect at once: it halves everyone's share."""
    return share // 4


def to_give_up(held: Iterable[str], with_work: Collection[str], share: int) -> list[str]:
    """The leases to hand over: those with no work left, and, once a member holds more than
    `share` + its slack, the highest-named above `share` (every member agrees which ones
    are taken first: the lowest-named)."""
    ordered = sorted(held)
    idle = [c for c in ordered if c not in with_work]
    busy = [c for c in ordered if c in with_work]
    surplus = busy[share:] if len(busy) > share + surplus_slack(share) else []
    return sorted(idle + surplus)


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Pacing(Protocol):
    """The pacing state of the connections, by connection id (as builtins, for the row)."""

    def export(self, connection_id: str) -> dict[str, Any]: ...

    def restore(self, connection_id: str, state: dict[str, Any], elapsed_s: float) -> None: ...

    def forget(self, connection_id: str) -> None: ...


@dataclass(slots=True)
class Tick:
    """What one renewal found."""

    held: set[str]
    taken: dict[str, tuple[dict[str, Any], float]]  # connection -> (pacing, its age in s)
    with_work: set[str]
    share: int
    members: list[str]


class LeaseTable:
    """The SQL of the leases, on one connection of its own (never waiting behind the pool
    that the lanes keep busy)."""

    def __init__(self, database_url: str, schema: str, member: str, *,
                 lease_s: float = LEASE_S, always: Sequence[str] = ()) -> None:
        self.info = conninfo(database_url, options=f"-c search_path={schema} "
                             f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        self.member = member
        self.lease = f"{lease_s} seconds"
        # Connections owned whenever they exist, work or not (HubSpot: its catalogue pulls).
        self.always = list(always)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = await psycopg.AsyncConnection.connect(
                self.info, autocommit=True, connect_timeout=2)
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def tick(self, pacing: dict[str, dict[str, Any]]) -> Tick:
        """Heartbeat; renew what this member holds (writing `pacing` into the rows); take
        free leases of connections with work up to the share."""
        try:
            return await self._tick(pacing)
        except Exception:
            await self.close()
            raise

    async def _tick(self, pacing: dict[str, dict[str, Any]]) -> Tick:
        conn = await self._connection()
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sync_members (member, expires_at) VALUES (%s, now() + %s::interval)"
                " ON CONFLICT (member) DO UPDATE SET heartbeat_at = now(),"
                " expires_at = excluded.expires_at", (self.member, self.lease))
            await conn.execute("DELETE FROM sync_members WHERE expires_at < now() - %s::interval",
                               (f"{MEMBER_FORGET_S} seconds",))
            members = [str(r[0]) for r in await (await conn.execute(
                "SELECT member FROM sync_members WHERE expires_at > now()"
                " ORDER BY started_at, member")).fetchall()]
            # Any pending or running change counts, due now or later: an organisation whose
            # changes wait out a back-off keeps its owner and its pacing.
            with_work = {str(r[0]) for r in await (await conn.execute(
                "SELECT c.connection_id FROM connections c WHERE c.connection_id = ANY(%s)"
                " OR (c.status = 'active' AND EXISTS (SELECT 1 FROM sync_jobs j"
                " WHERE j.connection_id = c.connection_id"
                " AND j.status IN ('pending', 'running')))", (self.always,))).fetchall()}
            await conn.execute(
                "INSERT INTO connection_leases (connection_id) SELECT unnest(%s::text[])"
                " ON CONFLICT DO NOTHING", (sorted(with_work),))
            # Every unexpired lease of this member, also those stopped here by the fence (a
            # renewal came late): nobody else can have taken them.
            held = {str(r[0]) for r in await (await conn.execute(
                "UPDATE connection_leases SET expires_at = now() + %s::interval,"
                " pacing = coalesce(%s::jsonb -> connection_id, pacing),"
                " pacing_at = CASE WHEN %s::jsonb ? connection_id THEN now() ELSE pacing_at END"
                " WHERE owner = %s AND expires_at > now() RETURNING connection_id",
                (self.lease, Jsonb(pacing), Jsonb(pacing), self.member))).fetchall()}
            share = fair_share(len(with_work), len(members))
            # Held with work, up to the share: the rest is being handed over.
            busy = min(len(held & with_work), share)
            taken: dict[str, tuple[dict[str, Any], float]] = {}
            expired: list[tuple[str, str]] = []
            if busy < share:
                for cid, state, age_s, was in await (await conn.execute(
                        "UPDATE connection_leases l SET owner = %s, epoch = l.epoch + 1,"
                        " expires_at = now() + %s::interval FROM ("
                        "  SELECT connection_id, owner FROM connection_leases"
                        "  WHERE connection_id = ANY(%s) AND (owner IS NULL OR expires_at <= now())"
                        "  ORDER BY connection_id LIMIT %s FOR UPDATE SKIP LOCKED) old"
                        " WHERE l.connection_id = old.connection_id"
                        " RETURNING l.connection_id, l.pacing,"
                        " extract(epoch FROM now() - l.pacing_at)::float8, old.owner",
                        (self.member, self.lease, sorted(with_work), share - busy)
                        )).fetchall():
                    taken[str(cid)] = (dict(state), float(age_s))
                    held.add(str(cid))
                    if was is not None:  # its owner stopped renewing (died or stalled)
                        expired.append((str(cid), str(was)))
        if expired:
            log.warning("sync.expired_leases_taken", member=self.member,
                        connections=[c for c, _ in expired],
                        from_members=sorted({m for _, m in expired}))
        return Tick(held=held, taken=taken, with_work=with_work, share=share, members=members)

    async def release(self, pacing: dict[str, dict[str, Any]]) -> None:
        """Give leases up at once, with their final pacing (their lanes have stopped)."""
        if not pacing:
            return
        try:
            conn = await self._connection()
            await conn.execute(
                "UPDATE connection_leases SET owner = NULL, expires_at = '-infinity',"
                " pacing = coalesce(%s::jsonb -> connection_id, pacing), pacing_at = now()"
                " WHERE owner = %s AND connection_id = ANY(%s)",
                (Jsonb(pacing), self.member, sorted(pacing)))
        except Exception:
            await self.close()
            raise

    async def leave(self) -> None:
        """At a clean stop: the member row goes, so the others' share grows at once."""
        with contextlib.suppress(Exception):
            conn = await self._connection()
            await conn.execute("DELETE FROM sync_members WHERE member = %s", (self.member,))


class Ownership:
    """This process's side of the leases: which connections it may call now, and the
    handovers (stopping a connection's lane before its lease is cleared)."""

    def __init__(self, table: LeaseTable, pacing: Pacing, *,
                 stop_lane: Callable[[str], Coroutine[Any, Any, None]], on_acquire: Callable[[], None],
                 renew_interval_s: float = RENEW_INTERVAL_S, lease_s: float = LEASE_S,
                 fence_margin_s: float = FENCE_MARGIN_S) -> None:
        self.table = table
        self._pacing = pacing
        self._stop_lane = stop_lane
        self._on_acquire = on_acquire
        self.renew_interval_s = renew_interval_s
        self.lease_s = lease_s
        self.fence_margin_s = fence_margin_s
        self.owned: set[str] = set()
        # Being handed over: its lane is stopping (the task ends when it has stopped).
        self._leaving: dict[str, asyncio.Task[None]] = {}
        self.valid_until = 0.0  # monotonic: nothing is owned past this unless renewed
        self.members: list[str] = []
        # Connections with work at the last tick, whoever owns them: work appearing for any
        # other brings the next tick forward.
        self._with_work: set[str] = set()
        self._nudged = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def member(self) -> str:
        return self.table.member

    def owns(self, connection_id: str) -> bool:
        """Whether a new change of the connection may start here."""
        return (connection_id in self.owned and connection_id not in self._leaving
                and time.monotonic() < self.valid_until)

    def holds(self, connection_id: str) -> bool:
        """Whether the connection may be called from here: its lease is held and renewed in
        time, handed over or not. A push in hand when its connection is being handed over
        finishes its calls (the lease is cleared only once it has); only the fence stops
        them."""
        return connection_id in self.owned and time.monotonic() < self.valid_until

    def work_seen(self, connection_ids: Iterable[str]) -> None:
        """The scheduler found due work for these connections and owns none of them: if any
        had no work at the last tick, its lease is free to take, so tick now."""
        if any(c not in self._with_work for c in connection_ids):
            self._nudged.set()

    async def start(self) -> None:
        """The first tick before returning (a lone process owns every connection with work
        at once); if the database is away, the renewals take the share later."""
        try:
            await self.tick()
        except Exception as exc:
            log.warning("sync.ownership_not_taken_at_start", error=f"{type(exc).__name__}: {exc}")
        self._task = asyncio.create_task(self._renew(), name="sync-ownership")

    async def stop(self) -> None:
        """Stop every lane, then clear the leases with their final pacing and leave."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            held = sorted(self.owned)
            await asyncio.gather(*(self._stop_lane(c) for c in held), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.table.release({c: self._pacing.export(c) for c in held})
            for cid in held:
                self._pacing.forget(cid)
            self.owned.clear()
            await self.table.leave()
            await self.table.close()
        log.info("sync.ownership_released", connections=len(held))

    async def tick(self) -> None:
        async with self._lock:
            started = time.monotonic()
            # Handovers whose lanes have stopped since the last tick: cleared now.
            stopped = {c: self._pacing.export(c) for c, task in self._leaving.items()
                       if task.done()}
            if stopped:
                await self.table.release(stopped)
                log.debug("sync.leases_released", connections=sorted(stopped))
                for cid in stopped:
                    del self._leaving[cid]
                    self.owned.discard(cid)
                    self._pacing.forget(cid)
            result = await self.table.tick({c: self._pacing.export(c) for c in self.owned})
            self.valid_until = started + self.lease_s - self.fence_margin_s
            self.members = result.members
            self._with_work = result.with_work
            lost = self.owned - result.held
            if lost:  # expired under us (a long stall): someone else may own them now
                log.warning("sync.leases_lost", connections=sorted(lost))
                await asyncio.gather(*(self._stop_lane(c) for c in lost), return_exceptions=True)
                for cid in lost:
                    self.owned.discard(cid)
                    self._pacing.forget(cid)
                    self._leaving.pop(cid, None)
            for cid, (state, age_s) in result.taken.items():
                self._pacing.forget(cid)
                self._pacing.restore(cid, state, age_s)
                self.owned.add(cid)
            # Held in the database but not known here (a tick that failed after its commit).
            self.owned |= result.held
            if result.taken:
                log.info("sync.leases_taken", connections=len(result.taken), share=result.share,
                         members=len(result.members))
                log.debug("sync.leases_taken_were", connections=sorted(result.taken))
                self._on_acquire()
            for cid in to_give_up(self.owned, result.with_work, result.share):
                if cid not in self._leaving:
                    self._leaving[cid] = asyncio.create_task(
                        self._stop_lane(cid), name=f"sync-handover:{cid}")

    async def _renew(self) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                ticked = time.monotonic()
                nudged = asyncio.ensure_future(self._nudged.wait())
                try:
                    await asyncio.wait((stopping, nudged), timeout=self.renew_interval_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    nudged.cancel()
                if self._stopping.is_set():
                    return
                if self._nudged.is_set():  # new work: tick now, but not more often than this
                    await asyncio.sleep(max(0.0, ticked + NUDGE_MIN_INTERVAL_S - time.monotonic()))
                    self._nudged.clear()
                try:
                    await self.tick()
                except Exception as exc:
                    log.warning("sync.ownership_renewal_failed",
                                error=f"{type(exc).__name__}: {exc}")
        finally:
            stopping.cancel()
