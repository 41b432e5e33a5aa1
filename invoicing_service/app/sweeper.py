"""Background duties: the overdue sweep and the monthly billing schedule."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from invoicing_service.app.billing import BillingRuns, previous_period
from invoicing_service.app.invoices import Invoices
from invoicing_service.app.queries import InvoiceQueries

log = structlog.get_logger(__name__)

OVERDUE_BATCH_MAX: Final = 500


async def sweep_overdue(queries: InvoiceQueries, invoices: Invoices) -> int:
    """Mark every open invoice past its due date overdue (once each); returns how many."""
    marked = 0
    while True:
        now = invoices.clock()
        candidates = await queries.overdue_candidates(now, OVERDUE_BATCH_MAX)
        for invoice_id in candidates:
            if await asyncio.to_thread(invoices.mark_overdue, invoice_id, now):
                marked += 1
        if len(candidates) < OVERDUE_BATCH_MAX:
            return marked


async def request_previous_month(runs: BillingRuns) -> str:
    """The scheduler's one step: the previous month's run (idempotent per period)."""
    period = previous_period(runs.clock())
    await runs.request(period)
    return period


class Periodic:
    """Runs a duty every `interval_s` until stopped; a failing round is logged, not fatal."""

    def __init__(self, name: str, interval_s: float, duty: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.duty = duty
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.duty()
            except Exception:
                log.exception("invoicing.duty_failed", duty=self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
