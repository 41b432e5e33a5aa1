"""The ledger's followers: the publisher of ledger.v1.events.* and the projection runner, in a
process of their own.

Both only read the event log and write elsewhere (NATS, the projection tables), so they need
nothing from the writer's process, and in it they took a third of its one core (the
interpreter lock lets one thread run at a time): intake and authorize went slower for it
(bench/, docs/benchmarks.md). The ledger service starts this process, restarts it if it dies,
and stops it on shutdown; the process also stops by itself when its parent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import nats
import psycopg
import structlog
import uvloop

from ledger_service.anchors import Anchorer
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.projections.runner import ProjectionRunner
from ledger_service.publisher import EventPublisher
from ledger_service.settings import parse_keyring, parse_seed
from services.broker import nats_servers
from services.database import conninfo, eventsourcing_env
from services.logging import configure_logging
from services.proctitle import set_process_name
from services.runtime import tune_garbage_collector

log = structlog.get_logger(__name__)

PARENT_CHECK_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 15.0
RESTART_WAIT_S = 2.0
PROCESS_NAME = "ledger-follower"  # its comm, for ps and top (services/proctitle.py)


@dataclass(frozen=True, slots=True)
class FollowerConfig:
    parent_pid: int  # the service; taken at spawn time, since it may die during our start-up
    database_url: str
    nats_url: str
    schema: str
    log_level: str
    log_format: str
    chain_keys: str
    anchor_signing_key: str
    anchor_interval_s: float
    anchor_dir: str
    anchor_group: str | None = None  # LEDGER_DATABASES: the group, named in anchor ids


def run(config: FollowerConfig) -> None:
    """The follower process's main: runs until SIGTERM or until its parent dies."""
    set_process_name(PROCESS_NAME)
    configure_logging(service="ledger_service.followers", level=config.log_level,
                      fmt=config.log_format)  # type: ignore[arg-type]
    uvloop.run(_follow(config))  # as the service's own loop: the publisher is NATS-bound


async def _follow(config: FollowerConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    configure_chain_keys(parse_keyring(config.chain_keys))
    app = await asyncio.to_thread(
        LedgerApplication, ledger_env(eventsourcing_env(config.database_url, config.schema)))
    nc = await nats.connect(nats_servers(config.nats_url), max_reconnect_attempts=-1, reconnect_time_wait=1)
    publisher = EventPublisher(Ledger(app), nc, publisher_connector(config.database_url))
    projections = ProjectionRunner.for_service(config.database_url, config.schema, app)
    anchorer = Anchorer(schema_connector(config.database_url, config.schema), nc,
                        parse_seed(config.anchor_signing_key),
                        interval_s=config.anchor_interval_s, directory=Path(config.anchor_dir),
                        group=config.anchor_group)
    # As the service does for itself: a catch-up batch allocates hundreds of thousands of
    # short-lived objects, and with the default thresholds the collector spent a tenth of the
    # runner's time walking the start-up heap (bench/projections.py).
    tune_garbage_collector()
    publisher.start()
    projections.start()
    anchorer.start()
    log.info("followers started", pid=os.getpid())
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), PARENT_CHECK_INTERVAL_S)
            if os.getppid() != config.parent_pid:
                log.warning("the ledger service is gone; followers stopping")
                break
    finally:
        try:
            await asyncio.wait_for(_stop(publisher, projections, anchorer, nc, app),
                                   STOP_TIMEOUT_S)
        except TimeoutError:
            # A dependency is gone (a dropped database, an unreachable NATS): what is not
            # stored is re-done from the log by the next follower, so leave now.
            log.error("followers did not stop in time; exiting")
            os._exit(1)
        log.info("followers stopped")


def publisher_connector(database_url: str) -> Callable[[], psycopg.Connection[Any]]:
    """The publisher's own connection, which holds its leadership lock."""
    info = conninfo(database_url)
    return lambda: psycopg.connect(info, autocommit=True, connect_timeout=5)


def schema_connector(database_url: str, schema: str) -> Callable[[], psycopg.Connection[Any]]:
    """Connections in the ledger's schema, for the anchorer."""
    info = conninfo(database_url)
    return lambda: psycopg.connect(info, autocommit=True, connect_timeout=5,
                                   options=f"-c search_path={schema}")


async def _stop(publisher: EventPublisher, projections: ProjectionRunner, anchorer: Anchorer,
                nc: Any, app: LedgerApplication) -> None:
    await anchorer.stop()
    await publisher.stop()
    await asyncio.to_thread(projections.stop)
    await nc.drain()
    app.close()


class Followers:
    """The service's handle on its follower process: start, keep alive, stop."""

    def __init__(self, config: FollowerConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._spawn()
        self._watch = asyncio.create_task(self._keep_alive(), name="followers-watch")

    def _spawn(self) -> None:
        self._process = self._context.Process(target=run, args=(self.config,),
                                              name="ledger-followers")
        self._process.start()

    async def _keep_alive(self) -> None:
        while not self._stopping:
            await asyncio.sleep(RESTART_WAIT_S)
            process = self._process
            if process is not None and not process.is_alive() and not self._stopping:
                log.error("follower process died; restarting", exitcode=process.exitcode)
                self._spawn()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        if process is None or not process.is_alive():
            return
        process.terminate()  # SIGTERM: the followers finish their batch and exit
        await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("follower process did not stop in time; killing it")
            process.kill()
            await asyncio.to_thread(process.join)
