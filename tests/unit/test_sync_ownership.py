"""The arithmetic of connection ownership (fair share, what to hand over) and the pacing state
that crosses a handover."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_service.app.ownership import (
    NUDGE_MIN_INTERVAL_S,
    LeaseTable,
    Ownership,
    Tick,
    fair_share,
    surplus_slack,
    to_give_up,
)
from sync_service.app.pacing import Bucket, Limits, Pacer, PaceState


@given(st.integers(0, 1_000), st.integers(1, 50))
def test_the_fair_shares_cover_every_connection_with_the_least_share(
    connections: int, members: int
) -> None:
    share = fair_share(connections, members)
    assert share * members >= connections
    assert (share - 1) * members < connections or share == 0


def test_no_member_yet_counts_as_one() -> None:
    assert fair_share(7, 0) == 7


@given(st.sets(st.integers(0, 40)), st.sets(st.integers(0, 40)), st.integers(0, 40))
def test_what_is_given_up_is_idle_or_above_the_share(
    held: set[int], with_work: set[int], share: int
) -> None:
    names = {f"org-{n:02d}" for n in held}
    busy = {f"org-{n:02d}" for n in with_work}
    given_up = set(to_give_up(names, busy, share))
    kept = names - given_up
    assert given_up <= names
    held_busy = len(names & busy)
    assert kept <= busy
    if held_busy > share + surplus_slack(share):
        assert len(kept) == share
    else:  # within the slack: nothing with work moves
        assert kept == names & busy
    # The lowest-named are kept: every member agrees which ones stay.
    assert all(k < g for k in kept for g in given_up & busy)


def _rebalance(owned: dict[str, set[str]], with_work: list[str], alive: list[str]) -> None:
    """One round of ticks, as LeaseTable.tick does it: give up, then take free ones in order."""
    share = fair_share(len(with_work), len(alive))
    for member in alive:
        owned.setdefault(member, set())
    for member in alive:
        mine = owned[member]
        mine -= set(to_give_up(mine, set(with_work), share))
        taken = set().union(*(owned[m] for m in alive))
        free = [c for c in with_work if c not in taken]
        mine |= set(free[: max(0, share - len(mine & set(with_work)))])


@settings(max_examples=200)
@given(st.integers(1, 60), st.integers(1, 6), st.integers(0, 5))
def test_members_joining_and_dying_converge_to_one_owner_each_within_the_share(
    connections: int, first: int, joined: int
) -> None:
    with_work = [f"org-{n:03d}" for n in range(connections)]
    alive = [f"m{n}" for n in range(first)]
    owned: dict[str, set[str]] = {}
    _rebalance(owned, with_work, alive)
    alive += [f"j{n}" for n in range(joined)]
    if len(alive) > 1:
        dead = alive.pop(len(alive) // 2)  # its leases expire: free for the others
        owned.pop(dead, None)
    for _ in range(2):
        _rebalance(owned, with_work, alive)
    share = fair_share(connections, len(alive))
    counts: dict[str, int] = {}
    for member in alive:
        assert len(owned[member]) <= share + surplus_slack(share)
        for connection in owned[member]:
            counts[connection] = counts.get(connection, 0) + 1
    assert counts == dict.fromkeys(with_work, 1)


LIMITS = Limits(calls_per_window=10, window_s=1.0, calls_per_day=50, concurrent_max=5,
                share=1.0)


async def test_the_next_owner_keeps_the_spacing_of_the_calls() -> None:
    before = Pacer(LIMITS)
    for _ in range(LIMITS.burst):  # the bucket is full: the next call waits a spacing
        async with before.call("org"):
            pass
    state = before.export("org")
    after = Pacer(LIMITS)
    after.restore("org", state, elapsed_s=0.0)
    started = time.monotonic()
    async with after.call("org"):
        pass
    assert time.monotonic() - started >= LIMITS.spacing_s * 0.9


async def test_the_daily_budget_and_a_429_pause_carry_over_aged_by_the_elapsed_time() -> None:
    after = Pacer(LIMITS)
    after.restore("org", PaceState(spacing=0.0, day=50.0, paused_s=30.0), elapsed_s=10.0)
    assert 19.0 < after.paused_for_s("org") <= 20.0
    exported = after.export("org")
    assert 49.9 < exported.day <= 50.0  # 10 s of a 50-a-day leak: almost nothing
    with_budget_spent = Pacer(LIMITS)
    with_budget_spent.restore("org", PaceState(day=50.0), elapsed_s=0.0)
    call = asyncio.ensure_future(with_budget_spent.call("org").__aenter__())
    await asyncio.sleep(0.05)
    assert not call.done()  # the day's calls are spent: it waits
    call.cancel()


def test_the_state_survives_its_row() -> None:
    state = PaceState(spacing=0.5, day=12.0, paused_s=3.0)
    assert PaceState.from_builtins(state.to_builtins()) == state
    assert PaceState.from_builtins({"day": "junk"}) == PaceState()


def test_the_state_keeps_the_window_of_answered_calls() -> None:
    state = PaceState(spacing=0.5, day=12.0, paused_s=0.0, window=(0.0, 0.25, 0.5))
    assert PaceState.from_builtins(state.to_builtins()) == state
    assert PaceState.from_builtins({"window": ["junk", 1]}).window == (0.0, 1.0)


async def test_a_provider_that_stalls_never_counts_more_than_its_limit_in_a_window() -> None:
    """A call reaches the provider at some instant between its start and its answer. Here the
    provider stalls for half a second: the calls sent meanwhile are all counted when it
    resumes, and with spacing alone the calls that follow at the usual pace would land in the
    same window as them (about 15 in one second of a 10-a-second limit)."""
    pacer = Pacer(LIMITS)
    arrivals: list[float] = []
    begin = time.monotonic()
    stall_from, stall_to = begin + 1.0, begin + 1.5

    async def call() -> None:
        async with pacer.call("org"):
            now = time.monotonic()
            if stall_from <= now < stall_to:
                await asyncio.sleep(stall_to - now)
            arrivals.append(time.monotonic())

    async def worker() -> None:
        while time.monotonic() < begin + 3.0:
            await call()

    await asyncio.gather(*(worker() for _ in range(LIMITS.concurrent_max)))
    arrivals.sort()
    busiest = max(sum(1 for t in arrivals[i:] if t < start + LIMITS.window_s)
                  for i, start in enumerate(arrivals))
    assert busiest <= LIMITS.calls_per_window, busiest


async def test_the_next_owner_waits_for_the_window_its_predecessor_filled() -> None:
    before = Pacer(LIMITS)
    for _ in range(2):
        async with before.call("org"):
            pass
    assert len(before.export("org").window) == 2  # what the predecessor hands over
    after = Pacer(LIMITS)
    after.restore("org", PaceState(window=(0.1,) * LIMITS.calls_per_window), elapsed_s=0.05)
    started = time.monotonic()
    async with after.call("org"):
        pass
    # The oldest answer, 0.15 s old at the handover, leaves the 1 s window 0.85 s later.
    assert time.monotonic() - started >= 0.8


class _OneMemberTable:
    """The lease table as one lone member sees it: every connection with work is its own."""

    member = "m1"

    def __init__(self) -> None:
        self.work: set[str] = set()
        self.ticks = 0

    async def tick(self, pacing: dict[str, dict[str, Any]]) -> Tick:
        self.ticks += 1
        held = set(pacing) & self.work
        taken = {c: ({}, 0.0) for c in sorted(self.work - held)}
        return Tick(held=held | set(taken), taken=taken, with_work=set(self.work),
                    share=len(self.work), members=[self.member])

    async def release(self, pacing: dict[str, dict[str, Any]]) -> None:
        pass

    async def leave(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _NoPacing:
    def export(self, connection_id: str) -> dict[str, Any]:
        return {}

    def restore(self, connection_id: str, state: dict[str, Any], elapsed_s: float) -> None:
        pass

    def forget(self, connection_id: str) -> None:
        pass


async def _noop(_: str) -> None:
    pass


async def test_new_work_is_owned_at_once_not_at_the_next_renewal() -> None:
    """With renewals an hour apart, an organisation whose first change appears is owned as
    soon as the scheduler reports it (it waited up to a renewal interval before); work the
    last tick already saw (another member's, say) brings no tick forward."""
    table = _OneMemberTable()
    acquired = asyncio.Event()
    owner = Ownership(cast(LeaseTable, table), _NoPacing(), stop_lane=_noop,
                      on_acquire=acquired.set, renew_interval_s=3600)
    await owner.start()
    try:
        assert table.ticks == 1 and not owner.owns("org-1")
        table.work.add("org-1")
        owner.work_seen(["org-1"])
        await asyncio.wait_for(acquired.wait(), timeout=5)
        assert owner.owns("org-1") and table.ticks == 2
        owner.work_seen(["org-1"])  # known at the last tick: nothing to look at again
        await asyncio.sleep(NUDGE_MIN_INTERVAL_S * 3)
        assert table.ticks == 2
    finally:
        await owner.stop()


async def test_a_late_start_is_made_up_by_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that starts late (its worker woke late on a busy loop) leaves the next to start
    sooner, so the pace holds; with a bucket of one call the late time was lost. It never
    lets more than the bucket's calls through at once."""
    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("sync_service.app.pacing.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("sync_service.app.pacing.asyncio.sleep", sleep)
    spacing = 0.1
    bucket = Bucket(2, spacing * 2, at=clock[0])
    for _ in range(4):  # two at once, then one a spacing apart
        await bucket.acquire()
    assert slept == pytest.approx([spacing, spacing])
    slept.clear()
    clock[0] += spacing + 0.06  # the next call's worker wakes 60 ms late
    await bucket.acquire()
    assert slept == []
    await bucket.acquire()  # the one after starts a spacing after the call that was not late
    assert slept == pytest.approx([spacing - 0.06])
    slept.clear()
    clock[0] += 10 * spacing  # a long stall: at most the bucket's two calls at once
    await bucket.acquire()
    await bucket.acquire()
    await bucket.acquire()
    assert slept == pytest.approx([spacing])


async def test_a_call_left_without_an_answer_counts_for_a_window_longer() -> None:
    """The provider may count a call we gave up on (a time-out, a dropped connection) when it
    finally reads it: such a call still fills the window after an answered one would not."""
    limits = Limits(calls_per_window=2, window_s=0.2, calls_per_day=50, concurrent_max=5,
                    share=1.0)
    pacer = Pacer(limits)
    with pytest.raises(ConnectionError):
        async with pacer.call("org"):
            raise ConnectionError("no answer")
    async with pacer.call("org"):
        pass
    await asyncio.sleep(limits.window_s * 1.5)  # the answered one has left the window
    pace = pacer._pace("org")
    assert pace.window_count(limits.window_s) == 1  # the unanswered one has not
    # and the next owner counts it too
    assert PaceState.from_builtins(pacer.export("org").to_builtins()).window[0] < limits.window_s
