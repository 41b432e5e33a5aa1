"""Wiring of the ledger service: the one place where its parts meet the kernel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from ledger_service import http_queries
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from ledger_service.http import EXCEPTION_STATUSES, LedgerServices, router
from ledger_service.messaging import Authorizer, Sweeper, Writer, consumers
from ledger_service.projections.runner import ProjectionRunner
from ledger_service.publisher import EventPublisher
from services.database import eventsourcing_env
from services.runtime import Runtime, ServiceParts, ServiceSpec

log = structlog.get_logger(__name__)
SCHEMA = "ledger"


def build(runtime: Runtime) -> ServiceParts:
    services = LedgerServices()
    queries = http_queries.QueryServices(services, runtime.pool)

    async def start(rt: Runtime) -> None:
        env = ledger_env(eventsourcing_env(rt.settings.database_url, SCHEMA))
        app = await asyncio.to_thread(LedgerApplication, env)
        ledger = Ledger(app)
        await asyncio.to_thread(ledger.catalogue)  # seeds the default catalogue on first start
        services.ledger, services.writer = ledger, Writer()
        nc = rt.broker.connection
        durables = consumers(nc, ledger, services.writer)
        authorizer = Authorizer(ledger, services.writer)
        publisher = EventPublisher(ledger, nc)
        sweeper = Sweeper(ledger, services.writer)
        projections = ProjectionRunner.for_service(rt.settings.database_url, SCHEMA, app)
        rt.state.update(consumers=durables, authorizer=authorizer, publisher=publisher,
                        sweeper=sweeper, ledger=ledger, writer=services.writer,
                        projections=projections)
        for consumer in durables:
            await consumer.start()
        await authorizer.start(nc)
        publisher.start()
        sweeper.start()
        projections.start()

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
        await rt.state["publisher"].stop()
        log.info("stopped publisher")
        await asyncio.to_thread(rt.state["projections"].stop)
        log.info("stopped projections")
        rt.state["writer"].close()
        rt.state["ledger"].app.close()

    return ServiceParts(
        route_handlers=[router(services), *http_queries.routers(queries)],
        exception_statuses={**EXCEPTION_STATUSES, **http_queries.EXCEPTION_STATUSES},
        on_startup=[start],
        on_shutdown=[stop],
    )


SPEC = ServiceSpec(
    name="ledger_service",
    title="Ledger service",
    version="0.1.0",
    schema=SCHEMA,
    http_port_default=8001,
    migrations=Path(__file__).parent / "migrations",
    build=build,
)
