"""Reads of accounts that need the event store, in a process of their own.

`GET /v1/accounts/{id}`, a balance whose projection row is behind, and `?as_of=` load an
account from the store. On the writer thread they waited behind intake and authorizations and
made them wait in turn. On reader threads of the service's own process they no longer queued
behind the writer, but they still shared its interpreter: a flood of as-of reads of a
1,000,000-event account (100 a second, 3.5 ms of CPU each) held the interpreter lock often
enough to take authorize's p99 from 7-10 ms to 22-42 ms (docs/benchmarks.md). So the reads
run in a reader process (READER_PROCESSES, default 1; 0 keeps them on threads in the service's
process, for tests of pure wiring): its own interpreter, its own application instance and
connections, so it never sees an aggregate the writer is half-way through changing. What
crosses the process boundary is small: the function's name, the account id and instant, and
the finished view.

A load is bounded whatever the history: the newest snapshot at or before the wanted version,
then at most a snapshot interval of events.

With a read replica (DATABASE_READ_URL) the reader also loads from the replica. `Readers`
asks it first and keeps its answer only when the replica holds the account's newest version
as the primary has it (read from the primary just before): a replica that lags is never
allowed to answer with an older account (docs/design.md, "Reads").

The reader process exits when the service that started it is gone, ignores the terminal's
Ctrl-C (the service stops it), and is started again if it dies (the read that found it dead is
retried once in the new one).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from uuid import UUID

import structlog

from contracts.http.ledger import AccountView, BalanceView
from ledger_service.app import accounts
from ledger_service.app.ledger import AccountNotFound, Ledger, LedgerApplication
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.settings import parse_keyring
from services.logging import configure_logging
from services.proctitle import set_process_name
from services.read_replica import REPLICA_ERRORS, ReadRouting

log = structlog.get_logger(__name__)

T = TypeVar("T")
READER_THREADS: Final = 2  # per reader, when the reads run in the service's own process
PRIMARY: Final = "primary"
REPLICA: Final = "replica"
PARENT_CHECK_INTERVAL_S: Final = 1.0
# The reader process yields the CPU to the service (its writer, authorize): when both want a
# core, the kernel gives the reader about a tenth of it (CFS weights 110 against 1024).
READER_NICE: Final = 10
PROCESS_NAME: Final = "ledger-reader"  # its comm, for ps and top (services/proctitle.py)


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """What a reader needs to open its stores: one eventsourcing environment per source
    (PRIMARY, and REPLICA with a read replica). Crosses to the reader process as it is."""

    sources: Mapping[str, Mapping[str, str]]
    chain_keys: str = ""
    log_level: str = "INFO"
    log_format: str = "auto"
    parent_pid: int = field(default_factory=os.getpid)


class _Stores:
    """The ledgers of a reader, opened on first use (a replica that is down at start-up
    does not stop the service) and kept."""

    def __init__(self, sources: Mapping[str, Mapping[str, str]]) -> None:
        self._sources = {name: dict(env) for name, env in sources.items()}
        self._ledgers: dict[str, Ledger] = {}
        self._lock = threading.Lock()

    def ledger(self, source: str) -> Ledger:
        with self._lock:
            ledger = self._ledgers.get(source)
            if ledger is None:
                ledger = Ledger(LedgerApplication(env=self._sources[source]))
                self._ledgers[source] = ledger
            return ledger

    def close(self) -> None:
        with self._lock:
            for ledger in self._ledgers.values():
                ledger.app.close()
            self._ledgers.clear()


_PROCESS_STORES: _Stores | None = None  # in a reader process: its stores


def _start_reader_process(config: ReaderConfig) -> None:
    """The reader process's initializer."""
    global _PROCESS_STORES
    set_process_name(PROCESS_NAME)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us, not the terminal
    os.nice(READER_NICE)
    configure_logging(service="ledger_service.reader", level=config.log_level,
                      fmt=config.log_format)  # type: ignore[arg-type]
    if config.chain_keys:
        configure_chain_keys(parse_keyring(config.chain_keys))
    _PROCESS_STORES = _Stores(config.sources)

    def watch_parent() -> None:
        while True:
            time.sleep(PARENT_CHECK_INTERVAL_S)
            if os.getppid() != config.parent_pid:
                os._exit(0)  # the service is gone (kill -9): nobody will ask us anything

    threading.Thread(target=watch_parent, name="reader-parent-watch", daemon=True).start()


def _run(stores: _Stores | None, source: str, fn: Callable[..., T], args: tuple[Any, ...],
         context: dict[str, Any]) -> T:
    """`fn(ledger of source, *args)` with the caller's log context, in a reader thread or
    process."""
    stores = stores if stores is not None else _PROCESS_STORES
    assert stores is not None, "not a reader process"
    with structlog.contextvars.bound_contextvars(**context):
        return fn(stores.ledger(source), *args)


def _warm(ledger: Ledger) -> int:
    """Opens the primary store ahead of the first read (connections, the mapper)."""
    return os.getpid()


class Reader:
    """Runs `fn(ledger, *args)` off the writer: in reader processes (`processes` >= 1) or on
    threads of this process (`processes` = 0)."""

    def __init__(self, config: ReaderConfig, processes: int = 1) -> None:
        self.config = config
        self.processes = processes
        self._stores = None if processes else _Stores(config.sources)
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(max_workers=READER_THREADS,
                                      thread_name_prefix="ledger-reader")
        return ProcessPoolExecutor(max_workers=self.processes,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_reader_process, initargs=(self.config,))

    def has(self, source: str) -> bool:
        return source in self.config.sources

    async def call(self, fn: Callable[..., T], *args: Any, source: str = PRIMARY) -> T:
        """`fn(ledger, *args)`: `fn` a module-level function, its arguments and its answer
        picklable (they cross to the reader process and back)."""
        context = structlog.contextvars.get_contextvars()
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            executor = self._executor
            try:
                return await loop.run_in_executor(executor, _run, self._stores, source, fn, args,
                                                  context)
            except BrokenProcessPool:
                if attempt == 2:
                    raise
                log.error("reader process died; starting another")
                if self._executor is executor:
                    self._executor = self._new_executor()
                    executor.shutdown(wait=False, cancel_futures=True)
        raise AssertionError("unreachable")

    async def warm(self) -> None:
        """Starts the reader process and opens the primary store, so the first read does not
        wait for it; a failure is logged (the first read tries again)."""
        try:
            pid = await self.call(_warm)
            log.info("reader ready", pid=pid, processes=self.processes)
        except Exception as exc:
            log.warning("reader warm-up failed", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._stores is not None:
            self._stores.close()


# What a reader runs. `at_least`: the account's newest version as the primary has it, when the
# answer may come from a replica (which must then hold that version); None on the primary.


class ReplicaBehind(Exception):
    """The replica has not replayed the account's newest version yet."""


def account_as_of(ledger: Ledger, account_id: UUID, as_of: datetime) -> BillingAccount:
    """The account as it stood at `as_of` (its events at or before that instant)."""
    version = ledger.version_at(account_id, as_of)
    if version is None:
        raise AccountNotFound(f"account {account_id} did not exist at {as_of.isoformat()}")
    account: Any = ledger.app.repository.get(account_id, version=version)
    if not isinstance(account, BillingAccount):
        raise AccountNotFound(f"account {account_id} not found")
    return account


def _account(ledger: Ledger, account_id: UUID, at_least: int | None) -> BillingAccount:
    account = ledger.read(account_id)
    if at_least is not None and account.version < at_least:
        raise ReplicaBehind(account_id)
    return account


def account_view(ledger: Ledger, account_id: UUID, at_least: int | None) -> AccountView:
    account = _account(ledger, account_id, at_least)
    return accounts.account_view(account, accounts.closed_at_of(ledger, account))


def balance_now(ledger: Ledger, account_id: UUID,
                at_least: int | None) -> tuple[BalanceView, int]:
    """The balance from the account itself (the projection is behind); with its version."""
    account = _account(ledger, account_id, at_least)
    return accounts.balance_view(account, datetime.now(UTC)), account.version


def balance_as_of(ledger: Ledger, account_id: UUID, as_of: datetime,
                  at_least: int | None) -> tuple[BalanceView, int]:
    """The balance at `as_of`; with a replica, once it holds every event of the account up to
    `at_least` (then an instant's answer is the same as the primary's)."""
    if at_least is not None:
        rows = ledger.query("SELECT max(originator_version) FROM {schema}.ledger_events"
                            " WHERE originator_id = %s", (account_id,))
        if not rows or rows[0][0] is None or int(rows[0][0]) < at_least:
            raise ReplicaBehind(account_id)
    account = account_as_of(ledger, account_id, as_of)
    return accounts.balance_view(account, as_of.astimezone(UTC)), account.version


class Readers:
    """The reader's answers, from the replica when it has the account's newest version (`head`,
    read from the primary at the start of the request), else from the primary."""

    def __init__(self, reader: Reader, routing: ReadRouting) -> None:
        self.reader = reader
        self.routing = routing

    def headers(self, from_replica: bool) -> dict[str, str]:
        if not self.routing.configured:
            return {}
        return {"X-Read-Source": "replica" if from_replica else "primary"}

    async def _answer(self, fn: Callable[..., T], head: int | None, *args: Any) -> tuple[T, bool]:
        """`fn(ledger, *args, at_least)`; True when the replica answered."""
        if head is not None and self.reader.has(REPLICA) \
                and await self.routing.replica_if_up() is not None:
            try:
                return await self.reader.call(fn, *args, head, source=REPLICA), True
            except (ReplicaBehind, AccountNotFound):
                pass
            except REPLICA_ERRORS as exc:
                self.routing.replica_failed(exc)
        return await self.reader.call(fn, *args, None), False

    async def account_view(self, account_id: UUID, head: int | None) -> tuple[AccountView, bool]:
        return await self._answer(account_view, head, account_id)

    async def balance(self, account_id: UUID,
                      head: int | None) -> tuple[tuple[BalanceView, int], bool]:
        return await self._answer(balance_now, head, account_id)

    async def balance_as_of(self, account_id: UUID, as_of: datetime,
                            head: int | None) -> tuple[tuple[BalanceView, int], bool]:
        return await self._answer(balance_as_of, head, account_id, as_of)

    def close(self) -> None:
        self.reader.close()
