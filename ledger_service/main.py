"""Wiring of the ledger service: the one place where its parts meet the kernel."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import structlog

from ledger_service import http_queries
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.followers import FollowerConfig, Followers
from ledger_service.http import EXCEPTION_STATUSES, LedgerServices, charges_router, router
from ledger_service.http_lag import lag_router
from ledger_service.lag import lag_metrics, read_lags_async
from ledger_service.messaging import Authorizer, Sweeper, Writer, consumers
from ledger_service.reader import Reader, Readers
from ledger_service.settings import LedgerSettings
from services.database import eventsourcing_env
from services.http.metrics import ScrapeCollector, named
from services.runtime import Runtime, ServiceParts, ServiceSpec
from services.stream_metrics import consumer_metrics, dead_letter_metrics

log = structlog.get_logger(__name__)
SCHEMA = "ledger"


def build(runtime: Runtime) -> ServiceParts:
    services = LedgerServices()
    services.pool = runtime.pool
    queries = http_queries.QueryServices(services, runtime.pool, runtime.reads)

    async def start(rt: Runtime) -> None:
        settings = rt.settings
        assert isinstance(settings, LedgerSettings)
        configure_chain_keys(settings.keyring())
        env = ledger_env(eventsourcing_env(rt.settings.database_url, SCHEMA))
        app = await asyncio.to_thread(LedgerApplication, env)
        ledger = Ledger(app)
        services.reader = Reader(Ledger(await asyncio.to_thread(LedgerApplication, env)))
        services.readers = Readers(services.reader, await replica_reader(rt), rt.reads)
        await asyncio.to_thread(ledger.catalogue)  # seeds the default catalogue on first start
        services.ledger, services.writer = ledger, Writer()
        nc = rt.broker.connection
        durables = consumers(nc, ledger, services.writer)
        authorizer = Authorizer(ledger, services.writer)
        sweeper = Sweeper(ledger, services.writer)
        followers = Followers(FollowerConfig(
            parent_pid=os.getpid(), database_url=rt.settings.database_url, nats_url=rt.settings.nats_url,
            schema=SCHEMA, log_level=rt.settings.log_level, log_format=rt.settings.log_format,
            chain_keys=settings.chain_keys, anchor_signing_key=settings.anchor_signing_key,
            anchor_interval_s=settings.anchor_interval_s, anchor_dir=settings.anchor_dir,
        ))
        rt.state.update(consumers=durables, authorizer=authorizer, sweeper=sweeper,
                        followers=followers, ledger=ledger, writer=services.writer)
        for consumer in durables:
            await consumer.start()
        await authorizer.start(nc)
        sweeper.start()
        followers.start()

    async def stop(rt: Runtime) -> None:
        if "ledger" not in rt.state:
            return
        # Stop taking work first, finish what is in hand, then close the store.
        await rt.state["authorizer"].stop()
        log.info("stopped authorizer")
        for consumer in rt.state["consumers"]:
            await consumer.stop()
            log.info("stopped consumer", durable=consumer.durable)
        await rt.state["sweeper"].stop()
        log.info("stopped sweeper")
        await rt.state["followers"].stop()
        log.info("stopped followers (publisher, projections)")
        rt.state["writer"].close()
        services.readers.close()
        services.reader.close()
        rt.state["ledger"].app.close()

    settings = runtime.settings
    assert isinstance(settings, LedgerSettings)
    return ServiceParts(
        route_handlers=[router(services), charges_router(services),
                        *http_queries.routers(queries),
                        lag_router(runtime.pool, settings.lag_alert_s)],
        exception_statuses={**EXCEPTION_STATUSES, **http_queries.EXCEPTION_STATUSES},
        on_startup=[start],
        on_shutdown=[stop],
        metrics=metrics(runtime),
    )


async def replica_reader(rt: Runtime) -> Reader | None:
    """Loads accounts from the read replica (DATABASE_READ_URL); read-only, so it creates no
    tables, and it connects on first use (a replica that is down does not stop the start)."""
    url = rt.settings.database_read_url
    if not url:
        return None
    env = ledger_env(eventsourcing_env(url, SCHEMA, CREATE_TABLE="n",
                                       POSTGRES_CONNECT_TIMEOUT="1"))
    return Reader(Ledger(await asyncio.to_thread(LedgerApplication, env)))


def metrics(runtime: Runtime) -> list[ScrapeCollector]:
    """Lag of the followers (a process of their own: read from the database positions),
    of the durable consumers and the dead letters (asked of NATS), at each scrape."""

    async def followers() -> list[Any]:
        return lag_metrics(await read_lags_async(runtime.pool))

    def durables() -> list[tuple[str, str]]:
        return [(c.stream, c.durable) for c in runtime.state.get("consumers", ())]

    connection = lambda: runtime.broker.connection  # noqa: E731 (connected after build)
    return [named("ledger-followers", followers), consumer_metrics(connection, durables),
            dead_letter_metrics(connection)]


SPEC = ServiceSpec(
    name="ledger_service",
    title="Ledger service",
    version="0.1.0",
    schema=SCHEMA,
    http_port_default=8001,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=LedgerSettings,
)
