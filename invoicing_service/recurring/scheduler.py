"""The renewal scheduler: a task of the invoicing process that runs the renewals every
RECURRING_POLL_INTERVAL_S (and at once when woken). Two processes may run it: each run locks
the items it charges, and the ledger's charge keys make any overlap harmless."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from invoicing_service.recurring.app.renewals import Renewals
from services.backoff import Backoff

log = structlog.get_logger(__name__)


class RenewalScheduler:
    def __init__(self, renewals: Renewals, *, poll_interval_s: float) -> None:
        self.renewals = renewals
        self.poll_interval_s = poll_interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failures = Backoff(initial_s=1.0, max_s=max(poll_interval_s, 1.0))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="recurring-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            wait_s = self.poll_interval_s
            try:
                counts = await self.renewals.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                wait_s = self._failures.next_wait_s()
                log.exception("recurring.run_failed", retry_in_s=round(wait_s, 2))
            else:
                self._failures.reset()
                if counts.charged or counts.refused or counts.failed or counts.suspended:
                    log.info("recurring.run", planned=counts.planned, charged=counts.charged,
                             refused=counts.refused, failed=counts.failed,
                             suspended=counts.suspended, ended=counts.ended)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            self._wake.clear()
