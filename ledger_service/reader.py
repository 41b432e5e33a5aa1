"""Reads of accounts that need the event store, off the writer.

`GET /v1/accounts/{id}`, a balance whose projection row is behind, and `?as_of=` load an
account from the store. On the writer thread they waited behind intake and authorizations and
made them wait in turn (one portal user asking for an old instant of a large account delayed
every authorization). Here they run on threads of their own, over a second application
instance (its own connections and its own cache, so a reader never sees an aggregate the
writer is half-way through changing), and a load is bounded whatever the history: the newest
snapshot at or before the wanted version, then at most a snapshot interval of events.

With a read replica (DATABASE_READ_URL) a second reader loads from the replica. `Readers`
asks it first and keeps its answer only when the replica holds the account's newest version
as the primary has it (read from the primary just before): a replica that lags is never
allowed to answer with an older account (docs/design.md, "Reads").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final, TypeVar
from uuid import UUID

import structlog

from contracts.http.ledger import AccountView
from ledger_service.app import accounts
from ledger_service.app.ledger import AccountNotFound, Ledger
from ledger_service.domain.account import BillingAccount
from services.read_replica import REPLICA_ERRORS, ReadRouting

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


class ReplicaBehind(Exception):
    """The replica has not replayed the account's newest version yet."""


def account_at_least(ledger: Ledger, account_id: UUID, version: int) -> BillingAccount:
    account = ledger.read(account_id)
    if account.version < version:
        raise ReplicaBehind(account_id)
    return account


def account_view_at_least(ledger: Ledger, account_id: UUID, version: int) -> AccountView:
    account = account_at_least(ledger, account_id, version)
    return accounts.account_view(account, accounts.closed_at_of(ledger, account))


def account_as_of_at_least(ledger: Ledger, account_id: UUID, as_of: datetime,
                           version: int) -> BillingAccount:
    """As `account_as_of`, once the store holds every event of the account up to `version`
    (then an instant's answer is the same as the primary's)."""
    rows = ledger.query("SELECT max(originator_version) FROM {schema}.ledger_events"
                        " WHERE originator_id = %s", (account_id,))
    if not rows or rows[0][0] is None or int(rows[0][0]) < version:
        raise ReplicaBehind(account_id)
    return account_as_of(ledger, account_id, as_of)


class Readers:
    """The primary's reader and, with a replica, the replica's; `head` is the account's newest
    version as read from the primary at the start of the request."""

    def __init__(self, primary: Reader, replica: Reader | None, routing: ReadRouting) -> None:
        self.primary = primary
        self.replica = replica
        self.routing = routing

    def headers(self, from_replica: bool) -> dict[str, str]:
        if not self.routing.configured:
            return {}
        return {"X-Read-Source": "replica" if from_replica else "primary"}

    async def _on_replica(self, fn: Callable[..., T], *args: Any) -> T | None:
        """`fn(replica ledger, *args)`, or None when the replica is down or behind."""
        if self.replica is None or await self.routing.replica_if_up() is None:
            return None
        try:
            return await self.replica.call(fn, self.replica.ledger, *args)
        except (ReplicaBehind, AccountNotFound):
            return None
        except REPLICA_ERRORS as exc:
            self.routing.replica_failed(exc)
            return None

    async def account(self, account_id: UUID, head: int | None) -> tuple[BillingAccount, bool]:
        """The account at `head` or newer; True when the replica answered."""
        if head is not None:
            found = await self._on_replica(account_at_least, account_id, head)
            if found is not None:
                return found, True
        return await self.primary.account(account_id), False

    async def account_view(self, account_id: UUID, head: int | None) -> tuple[AccountView, bool]:
        if head is not None:
            found = await self._on_replica(account_view_at_least, account_id, head)
            if found is not None:
                return found, True
        view = await self.primary.call(accounts.read_account, self.primary.ledger, account_id)
        return view, False

    async def account_as_of(self, account_id: UUID, as_of: datetime,
                            head: int | None) -> tuple[BillingAccount, bool]:
        if head is not None:
            found = await self._on_replica(account_as_of_at_least, account_id, as_of, head)
            if found is not None:
                return found, True
        return await self.primary.account_as_of(account_id, as_of), False

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()
