"""A lane claims several changes at once; one it held too long (its lease half gone), or holds
when a 429 pauses the organisation, goes back to the queue instead of being pushed."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sync_service.app.queue import Job, SyncQueue
from sync_service.app.scheduler import Scheduler, _Lane


def _job(n: int) -> Job:
    return Job(job_id=n, connection_id="org", account_id=None, kind="invoice",
               subject_id=f"inv-{n}", payload={}, attempts=1, failures=0,
               outcome_unknown=False)


class _Queue:
    def __init__(self, batches: list[list[Job]], lease_s: float) -> None:
        self.batches = batches
        self.lease_s = lease_s
        self.released: list[int] = []
        self.claims: list[int] = []

    async def due_connections(self) -> list[str]:
        return ["org"] if self.batches else []

    async def claim(self, connection_id: str, limit: int) -> list[Job]:
        self.claims.append(limit)
        return self.batches.pop(0) if self.batches else []

    async def release(self, jobs: list[Job]) -> None:
        self.released.extend(job.job_id for job in jobs)


async def _drain(queue: _Queue, push: Any, paused_for_s: Any = lambda _: 0.0) -> None:
    scheduler = Scheduler(cast(SyncQueue, queue), push, paused_for_s,
                          workers_per_connection=1, poll_interval_s=0.01, claim_batch_max=3)
    await scheduler._lane(_Lane("org"))


async def test_a_batch_is_claimed_once_and_pushed_in_order() -> None:
    queue = _Queue([[_job(1), _job(2), _job(3)]], lease_s=60)
    pushed: list[int] = []

    async def push(job: Job) -> None:
        pushed.append(job.job_id)

    await _drain(queue, push)
    assert pushed == [1, 2, 3] and queue.released == [] and queue.claims == [3, 3]


async def test_changes_held_past_half_their_lease_go_back_unpushed() -> None:
    queue = _Queue([[_job(1), _job(2), _job(3)]], lease_s=0.2)
    pushed: list[int] = []

    async def slow_push(job: Job) -> None:  # the daily budget ran out, say
        pushed.append(job.job_id)
        await asyncio.sleep(0.15)

    await _drain(queue, slow_push)
    assert pushed == [1] and queue.released == [2, 3]


async def test_a_paused_organisation_gives_back_what_it_claimed() -> None:
    queue = _Queue([[_job(1), _job(2), _job(3)]], lease_s=60)
    pushed: list[int] = []
    paused = {"s": 0.0}

    async def push_then_429(job: Job) -> None:
        pushed.append(job.job_id)
        paused["s"] = 0.05 if job.job_id == 1 else 0.0

    def paused_for_s(_: str) -> float:
        value, paused["s"] = paused["s"], 0.0  # one pause, then resumed
        return value

    await _drain(queue, push_then_429, paused_for_s)
    assert pushed == [1] and queue.released == [2, 3]


async def test_a_lane_no_longer_owned_starts_nothing_more_and_gives_back_its_claim() -> None:
    queue = _Queue([[_job(1), _job(2), _job(3)]], lease_s=60)
    pushed: list[int] = []
    owned = {"org": True}

    async def push_then_lose_the_lease(job: Job) -> None:
        pushed.append(job.job_id)
        owned["org"] = False  # the lease lapsed (the database away) or was handed over

    scheduler = Scheduler(cast(SyncQueue, queue), push_then_lose_the_lease, lambda _: 0.0,
                          workers_per_connection=1, poll_interval_s=0.01, claim_batch_max=3,
                          owns=lambda c: owned[c])
    await scheduler._lane(_Lane("org"))
    assert pushed == [1] and sorted(queue.released) == [2, 3]


async def test_stopping_a_lane_waits_for_the_push_in_hand_and_starts_no_other() -> None:
    queue = _Queue([[_job(1), _job(2), _job(3)]], lease_s=60)
    pushed: list[int] = []
    finished: list[int] = []
    in_hand = asyncio.Event()
    go_on = asyncio.Event()

    async def push(job: Job) -> None:
        pushed.append(job.job_id)
        in_hand.set()
        await go_on.wait()
        finished.append(job.job_id)

    scheduler = Scheduler(cast(SyncQueue, queue), push, lambda _: 0.0, workers_per_connection=1,
                          poll_interval_s=0.01, claim_batch_max=3)
    await scheduler.start()
    await asyncio.wait_for(in_hand.wait(), 2)
    stopping = asyncio.create_task(scheduler.stop_lane("org"))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the push in hand is not cut short
    go_on.set()
    await asyncio.wait_for(stopping, 2)
    await scheduler.stop()
    assert pushed == finished == [1] and sorted(queue.released) == [2, 3]
