"""Client-side pacing per Xero organisation, so that our own traffic provokes no 429.

Each organisation (tenant) gets its own limits, never one global limit shared by all (Lago's
throttling was global per provider): calls spaced at `share` of the minute limit, a daily
budget, and a semaphore for Xero's 5 concurrent calls. A 429 pauses that organisation alone
for its `Retry-After`.

The spacing is a leaky bucket of capacity `burst` (2) leaking one call per spacing: calls
come one spacing apart, and a call that starts late (its worker woke late on a busy event
loop, or was busy with the database) is made up by the next, which then starts less than a
spacing after it. With capacity one, every late start was lost for good: on a loaded machine
the organisations ran at 95-97% of their limit instead of 99%. The burst never breaks the
limit: the window rule below caps any window at the limit whatever the spacing.

Only the process that owns an organisation calls it (app/ownership.py), so these limits are
the organisation's, not this process's share of them. The state of an organisation's buckets
and pause is exported when its ownership is renewed or given up, and restored by its next
owner (`PaceState`), so that a handover neither bursts nor forgets a 429.

Even spacing alone holds only while the provider sees our calls when we send them. A provider
that stalls (or a network that delays some calls by seconds) can then count two minutes'
worth of calls in one of its windows: measured against the fake Xero under load, 12 to 20
'minute' 429s in a run of 20,000 invoices. So a second rule, which holds whatever the delay:
a call starts only while fewer than the window's limit of calls are in flight or were
answered within the last window. (A call reaches the provider between its start and its
answer; if the provider counted more than the limit in some window, the last of them to
start would have seen all the others in flight or answered within a window of its start.)
The answered times are carried across a handover with the buckets (`PaceState.window`).

The buckets are ours rather than aiolimiter's (which the first version used, with the same
arithmetic, and which is no longer a dependency) only because their level must be read and
set across a handover.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from sync_service.domain.errors import ProviderUnavailable

IN_FLIGHT_POLL_S: Final = 0.05  # a window full of calls still in flight: look again soon


@dataclass(frozen=True, slots=True)
class Limits:
    calls_per_window: int
    window_s: float
    calls_per_day: int
    concurrent_max: int
    share: float = 0.99
    burst: int = 2  # calls the spacing bucket holds: a late start is made up by the next

    @property
    def spacing_s(self) -> float:
        return self.window_s / (self.calls_per_window * self.share)


@dataclass(slots=True)
class Bucket:
    """A leaky bucket: `capacity` calls, leaking at `capacity / period_s` a second; a call
    waits until it fits. Capacity one is an even spacing of `period_s`."""

    capacity: float
    period_s: float
    level: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def leak(self) -> float:
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self.at) * self.capacity / self.period_s)
        self.at = now
        return self.level

    async def acquire(self) -> None:
        # Check and increment with no await between: atomic on the event loop.
        # (Within a nanosecond of a call's worth counts as room: float rounding.)
        while (excess := self.leak() + 1 - self.capacity) > 1e-9:  # noqa: ASYNC110 (a clock)
            await asyncio.sleep(excess * self.period_s / self.capacity)
        self.level += 1


@dataclass(frozen=True, slots=True)
class PaceState:
    """What an organisation's next owner must start from: the buckets' levels and the pause
    left, as they were `elapsed_s` ago (the database's clock measures that)."""

    spacing: float = 0.0
    day: float = 0.0
    paused_s: float = 0.0
    # How long ago each call of the last window was answered (0 for one still in flight).
    window: tuple[float, ...] = ()

    def to_builtins(self) -> dict[str, Any]:
        return {"spacing": self.spacing, "day": self.day, "paused_s": self.paused_s,
                "window": [round(age, 3) for age in self.window]}

    @classmethod
    def from_builtins(cls, data: Mapping[str, object]) -> PaceState:
        def number(value: object) -> float:
            return float(value) if isinstance(value, int | float) else 0.0

        window = data.get("window")
        return cls(spacing=number(data.get("spacing")), day=number(data.get("day")),
                   paused_s=number(data.get("paused_s")),
                   window=tuple(number(age) for age in window)
                   if isinstance(window, list) else ())


@dataclass
class _TenantPace:
    spacing: Bucket
    day: Bucket
    in_flight: asyncio.Semaphore
    paused_until: float = 0.0
    calls: int = 0
    started: int = 0  # calls started and not yet answered
    answered: deque[float] = field(default_factory=deque)  # when, within the last window

    def window_count(self, window_s: float) -> int:
        """Calls in flight, or answered within the last `window_s`."""
        horizon = time.monotonic() - window_s
        while self.answered and self.answered[0] <= horizon:
            self.answered.popleft()
        return self.started + len(self.answered)


class Pacer:
    def __init__(self, limits: Limits, may_call: Callable[[str], bool] | None = None) -> None:
        self.limits = limits
        # Whether this process still owns the organisation, checked just before each call:
        # a push in hand when the lease may be lapsing (the database away) stops there.
        self.may_call = may_call
        self._tenants: dict[str, _TenantPace] = {}

    def _pace(self, tenant_id: str) -> _TenantPace:
        pace = self._tenants.get(tenant_id)
        if pace is None:
            pace = _TenantPace(
                spacing=Bucket(self.limits.burst, self.limits.spacing_s * self.limits.burst),
                day=Bucket(self.limits.calls_per_day, 86_400),
                in_flight=asyncio.Semaphore(self.limits.concurrent_max),
            )
            self._tenants[tenant_id] = pace
        return pace

    def pause(self, tenant_id: str, seconds: float) -> None:
        pace = self._pace(tenant_id)
        pace.paused_until = max(pace.paused_until, time.monotonic() + seconds)

    def paused_for_s(self, tenant_id: str) -> float:
        return max(0.0, self._pace(tenant_id).paused_until - time.monotonic())

    def export(self, tenant_id: str) -> PaceState:
        pace = self._pace(tenant_id)
        pace.window_count(self.limits.window_s)
        now = time.monotonic()
        return PaceState(spacing=pace.spacing.leak(), day=pace.day.leak(),
                         paused_s=self.paused_for_s(tenant_id),
                         window=(*(0.0 for _ in range(pace.started)),
                                 *(now - at for at in reversed(pace.answered))))

    def restore(self, tenant_id: str, state: PaceState, elapsed_s: float) -> None:
        """Start an organisation where its previous owner left it `elapsed_s` ago (before
        any call of ours to it: the levels are set, not added)."""
        pace = self._pace(tenant_id)
        now = time.monotonic()
        elapsed_s = max(0.0, elapsed_s)
        for bucket, level in ((pace.spacing, state.spacing), (pace.day, state.day)):
            bucket.level = max(0.0, level - elapsed_s * bucket.capacity / bucket.period_s)
            bucket.at = now
        pace.paused_until = max(pace.paused_until, now + state.paused_s - elapsed_s)
        pace.answered = deque(sorted(now - age - elapsed_s for age in state.window
                                     if age + elapsed_s < self.limits.window_s))

    def forget(self, tenant_id: str) -> None:
        """No longer ours: its state lives in the lease row until we own it again."""
        self._tenants.pop(tenant_id, None)

    @asynccontextmanager
    async def call(self, tenant_id: str) -> AsyncIterator[None]:
        """Hold one of the organisation's concurrent slots for one paced call."""
        pace = self._pace(tenant_id)
        async with pace.in_flight:
            # A deadline that a later 429 may push back, so it is re-read after each sleep.
            while (wait_s := pace.paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait_s)
            await pace.day.acquire()
            await pace.spacing.acquire()
            # No await between the last check and `started += 1`: atomic on the event loop.
            while pace.window_count(self.limits.window_s) >= self.limits.calls_per_window:
                # The window is full as the provider may count it: wait for its oldest answer
                # to leave it (or, with calls in flight only, for one of them to be answered).
                wait_s = (pace.answered[0] + self.limits.window_s - time.monotonic()
                          if pace.answered else IN_FLIGHT_POLL_S)
                await asyncio.sleep(max(0.01, wait_s))
            if self.may_call is not None and not self.may_call(tenant_id):
                raise ProviderUnavailable("this process no longer owns the organisation",
                                          outcome_unknown=False)
            pace.calls += 1
            pace.started += 1
            answered_at: float | None = None
            try:
                yield
            except BaseException:
                # No answer (a transport error, a time-out, a cancellation): the provider may
                # still receive the call after we gave up on it and count it then, which
                # the window rule's argument does not allow for. So it counts for a window
                # longer.
                answered_at = time.monotonic() + self.limits.window_s
                raise
            finally:
                pace.started -= 1
                # In order (a call counted a window longer may sit among later answers).
                bisect.insort(pace.answered, answered_at or time.monotonic())
