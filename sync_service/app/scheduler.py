"""Draining the sync queue: one lane per connection with work, so that every organisation
advances at its own pace and one organisation's backlog never starves another's.

The supervisor looks for connections with due work every poll interval (or at once when
woken) and starts a lane for each that has none. A lane runs up to the organisation's
concurrency in workers; they take changes from the lane's batch, claimed a few at a time
(one round trip for several changes), and push each through the organisation's pacer. A
lane ends when its connection has nothing due; changes it claimed and did not start go back
to the queue (on a 429 pause or a stop), so none sits out its lease.

With several sync processes, a lane runs only for a connection this process owns (`owns`,
app/ownership.py), and ends once it no longer does: a handover stops the lane
(`stop_lane`: no new change starts, the pushes in hand finish) before the lease is cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from sync_service.app.queue import Job, SyncQueue

log = structlog.get_logger(__name__)


@dataclass
class _Lane:
    connection_id: str
    claimed: deque[tuple[float, Job]] = field(default_factory=deque)  # (when, job): not started
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopping: bool = False


class Scheduler:
    def __init__(self, queue: SyncQueue, push: Callable[[Job], Awaitable[None]],
                 paused_for_s: Callable[[str], float], *, workers_per_connection: int,
                 poll_interval_s: float, claim_batch_max: int | None = None,
                 owns: Callable[[str], bool] = lambda _: True,
                 work_seen: Callable[[list[str]], None] = lambda _: None) -> None:
        self._queue = queue
        self._push = push
        self._paused_for_s = paused_for_s
        self._workers = workers_per_connection
        # One claim per round of the lane's workers: a claimed change waits at most that
        # many paced calls (seconds at Xero's pace) before it starts, far inside its lease.
        self._claim_batch_max = claim_batch_max or workers_per_connection
        self._poll_interval_s = poll_interval_s
        self._owns = owns
        self._work_seen = work_seen
        self._lanes: dict[str, tuple[_Lane, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._supervise(), name="sync-scheduler")

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        lanes = [task for _, task in self._lanes.values()]
        tasks = [t for t in (self._task, *lanes) if t is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()  # its lease expires; the change comes back as outcome unknown
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                not_owned = []
                for connection_id in await self._queue.due_connections():
                    if not self._owns(connection_id):
                        not_owned.append(connection_id)
                        continue
                    running = self._lanes.get(connection_id)
                    if running is None or running[1].done():
                        lane = _Lane(connection_id)
                        self._lanes[connection_id] = (lane, asyncio.create_task(
                            self._lane(lane), name=f"sync-lane:{connection_id}"))
                if not_owned:  # new work may be free to take: the leases look at once
                    self._work_seen(not_owned)
            except Exception as exc:  # the database away: try again next round
                log.warning("sync.scheduler_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)

    async def stop_lane(self, connection_id: str) -> None:
        """Stop a connection's lane: its workers start no new change and finish the one in
        hand; what it claimed and did not start goes back to the queue."""
        running = self._lanes.get(connection_id)
        if running is None:
            return
        lane, task = running
        lane.stopping = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _lane(self, lane: _Lane) -> None:
        try:
            await asyncio.gather(*(self._work(lane) for _ in range(self._workers)))
        finally:
            await self._release(lane)

    async def _release(self, lane: _Lane) -> None:
        jobs = [job for _, job in lane.claimed]
        lane.claimed.clear()
        try:
            await self._queue.release(jobs)
        except Exception as exc:  # their leases run out instead
            log.warning("sync.release_failed", connection_id=lane.connection_id,
                        error=str(exc))

    async def _next(self, lane: _Lane) -> Job | None:
        while True:
            if not lane.claimed:
                async with lane.claiming:
                    if not lane.claimed:  # another worker may have claimed meanwhile
                        claimed_at = time.monotonic()
                        lane.claimed.extend((claimed_at, job) for job in await self._queue.claim(
                            lane.connection_id, self._claim_batch_max))
            if not lane.claimed:
                return None
            claimed_at, job = lane.claimed.popleft()
            # Held too long (the organisation's daily budget ran out meanwhile): its lease may
            # run out while it is pushed, and a claim would take it a second time. Back it goes.
            if time.monotonic() - claimed_at < self._queue.lease_s / 2:
                return job
            await self._queue.release([job])

    async def _work(self, lane: _Lane) -> None:
        connection_id = lane.connection_id
        while not (self._stopping.is_set() or lane.stopping) and self._owns(connection_id):
            # An organisation paused by a 429 claims nothing meanwhile, and gives back what
            # it holds: a change held past its lease would be claimed a second time.
            if (paused_s := self._paused_for_s(connection_id)) > 0:
                await self._release(lane)
                await asyncio.sleep(min(paused_s, self._poll_interval_s * 10))
                continue
            try:
                job = await self._next(lane)
                if job is None:
                    return
                if lane.stopping or not self._owns(connection_id):  # lost while claiming
                    await self._queue.release([job])
                    return
                await self._push(job)
            except Exception as exc:
                # A bug or the database away: the lease brings the change back.
                log.exception("sync.worker_failed", connection_id=connection_id,
                              error=str(exc))
                await asyncio.sleep(self._poll_interval_s)
                return
