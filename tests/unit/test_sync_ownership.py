"""The arithmetic of connection ownership (fair share, what to hand over) and the pacing state
that crosses a handover."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from sync_service.app.ownership import fair_share, surplus_slack, to_give_up
from sync_service.app.pacing import Limits, Pacer, PaceState


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
