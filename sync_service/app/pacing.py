"""Client-side pacing per Xero organisation, so that our own traffic provokes no 429.

Each organisation (tenant) gets its own limits, never one global limit shared by all (Lago's
throttling was global per provider): calls evenly spaced at `share` of the minute limit
(aiolimiter, with no burst, so that no rolling window ever holds more than the limit), a daily
budget, and a semaphore for Xero's 5 concurrent calls. A 429 pauses that organisation alone
for its `Retry-After`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter


@dataclass(frozen=True, slots=True)
class Limits:
    calls_per_window: int
    window_s: float
    calls_per_day: int
    concurrent_max: int
    share: float = 0.97

    @property
    def spacing_s(self) -> float:
        return self.window_s / (self.calls_per_window * self.share)


@dataclass
class _TenantPace:
    spacing: AsyncLimiter
    day: AsyncLimiter
    in_flight: asyncio.Semaphore
    paused_until: float = 0.0
    calls: int = 0
    waits_s: float = field(default=0.0)


class Pacer:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._tenants: dict[str, _TenantPace] = {}

    def _pace(self, tenant_id: str) -> _TenantPace:
        pace = self._tenants.get(tenant_id)
        if pace is None:
            pace = _TenantPace(
                spacing=AsyncLimiter(1, self.limits.spacing_s),
                day=AsyncLimiter(self.limits.calls_per_day, 86_400),
                in_flight=asyncio.Semaphore(self.limits.concurrent_max),
            )
            self._tenants[tenant_id] = pace
        return pace

    def pause(self, tenant_id: str, seconds: float) -> None:
        pace = self._pace(tenant_id)
        pace.paused_until = max(pace.paused_until, time.monotonic() + seconds)

    def paused_for_s(self, tenant_id: str) -> float:
        return max(0.0, self._pace(tenant_id).paused_until - time.monotonic())

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
            pace.calls += 1
            yield
