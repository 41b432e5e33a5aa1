"""Reads of accounts that need the event store, off the writer.

`GET /v1/accounts/{id}`, a balance whose projection row is behind, and `?as_of=` load an
account from the store. On the writer thread they waited behind intake and authorizations and
made them wait in turn (one portal user asking for an old instant of a large account delayed
every authorization). Here they run on threads of their own, over a second application
instance (its own connections and its own cache, so a reader never sees an aggregate the
writer is half-way through changing), and a load is bounded whatever the history: the newest
snapshot at or before the wanted version, then at most a snapshot interval of events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, TypeVar
from uuid import UUID

import structlog

from ledger_service.app.ledger import AccountNotFound, Ledger
from ledger_service.domain.account import BillingAccount

T = TypeVar("T")
READER_THREADS: Final = 2


class Reader:
    def __init__(self, ledger: Ledger, threads: int = READER_THREADS) -> None:
        self.ledger = ledger
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ledger-reader")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        context = structlog.contextvars.get_contextvars()

        def run() -> T:
            with structlog.contextvars.bound_contextvars(**context):
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def account(self, account_id: UUID) -> BillingAccount:
        return await self.call(self.ledger.read, account_id)

    async def account_as_of(self, account_id: UUID, as_of: datetime) -> BillingAccount:
        return await self.call(account_as_of, self.ledger, account_id, as_of)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.ledger.app.close()


def account_as_of(ledger: Ledger, account_id: UUID, as_of: datetime) -> BillingAccount:
    """The account as it stood at `as_of` (its events at or before that instant)."""
    version = ledger.version_at(account_id, as_of)
    if version is None:
        raise AccountNotFound(f"account {account_id} did not exist at {as_of.isoformat()}")
    account: Any = ledger.app.repository.get(account_id, version=version)
    if not isinstance(account, BillingAccount):
        raise AccountNotFound(f"account {account_id} not found")
    return account
