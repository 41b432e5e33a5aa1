"""Wiring of the ledger service: the one place where its parts meet the kernel."""

from __future__ import annotations

import asyncio
import os
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import structlog

from ledger_service import http_queries
from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from ledger_service.command_routing import CommandRouter
from ledger_service.databases import account_id_in
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.followers import FollowerConfig, Followers
from ledger_service.http import EXCEPTION_STATUSES, LedgerServices, charges_router, router
from ledger_service.http_lag import lag_router
from ledger_service.lag import follower_metrics
from ledger_service.messaging import (
    Authorizer,
    IntakeBatcher,
    Priority,
    Sweeper,
    Writer,
    consumers,
    partition_consumer,
)
from ledger_service.partitions import LeaseTable, PartitionOwner, member_id
from ledger_service.reader import PRIMARY, REPLICA, Reader, ReaderConfig, Readers
from ledger_service.runtime_role import sync_runtime_rights
from ledger_service.settings import LedgerSettings
from services.broker import STREAM_LIMITS
from services.database import conninfo, eventsourcing_env
from services.http.metrics import ScrapeCollector, named
from services.runtime import Runtime, ServiceParts, ServiceSpec
from services.settings import ServiceSettings
from services.stream_metrics import consumer_metrics, dead_letter_metrics, stream_fill_metrics

log = structlog.get_logger(__name__)
SCHEMA = "ledger"
CATALOGUE_CHECK_INTERVAL_S = 2.0


def build(runtime: Runtime) -> ServiceParts:
    services = LedgerServices()
    services.pool = runtime.pool
    commands = CommandRouter()  # an account's HTTP writes go to its partition's owner
    queries = http_queries.QueryServices(services, runtime.pool, runtime.reads)

    async def start(rt: Runtime) -> None:
        settings = rt.settings
        assert isinstance(settings, LedgerSettings)
        configure_chain_keys(settings.keyring())
        # LEDGER_DATABASES: this process serves one group of partitions, whose database
        # DATABASE_URL already is (LedgerSettings.resolved); None: every partition, one database.
        databases = settings.database_map()
        group = settings.database_group_of(databases) if databases is not None else None
        if group is not None:
            services.new_account_id = partial(account_id_in, group, settings.partitions)
            log.info("serving one database group", group=group.label)
        env = ledger_env(eventsourcing_env(rt.settings.database_url, SCHEMA))
        app = await asyncio.to_thread(LedgerApplication, env)
        ledger = Ledger(app)
        services.readers = Readers(Reader(reader_config(rt, env), settings.reader_processes),
                                   rt.reads)
        rt.state["reader_warm"] = asyncio.create_task(services.readers.reader.warm(),
                                                      name="reader-warm")
        await asyncio.to_thread(ledger.catalogue)  # seeds the default catalogue on first start
        services.ledger, services.writer = ledger, Writer()
        nc = rt.broker.connection
        writer = services.writer
        follower_config = FollowerConfig(
            parent_pid=os.getpid(), database_url=rt.settings.database_url, nats_url=rt.settings.nats_url,
            schema=SCHEMA, log_level=rt.settings.log_level, log_format=rt.settings.log_format,
            chain_keys=settings.chain_keys, anchor_signing_key=settings.anchor_signing_key,
            anchor_interval_s=settings.anchor_interval_s, anchor_dir=settings.anchor_dir,
            anchor_group=group.name if group is not None else None,
        )
        partition_consumers: dict[int, Any] = {}
        followers: dict[str, Followers] = {}

        async def on_acquire(partition: int) -> None:
            # Another process applied this partition until now: what is cached is stale.
            await writer.call(ledger.evict_partitions, [partition], settings.partitions,
                              priority=Priority.AUTHORIZE)
            consumer = partition_consumer(nc, ledger, writer, owner, partition, batcher)
            await consumer.start()
            partition_consumers[partition] = consumer
            await authorizer.add_partition(partition)
            await commands.add_partition(partition)

        async def on_release(partition: int) -> None:
            await commands.remove_partition(partition)
            await authorizer.remove_partition(partition)
            consumer = partition_consumers.pop(partition, None)
            if consumer is not None:
                await consumer.stop()

        async def on_leader(leader: bool) -> None:
            # The followers (publisher, projections, anchorer) run in one ledger process: the
            # oldest live member. Publisher and projections also hold advisory locks, so the
            # overlap of a handover is harmless.
            current = followers.pop("process", None)
            if current is not None:
                await current.stop()
            if leader:
                followers["process"] = Followers(follower_config)
                followers["process"].start()

        owner = PartitionOwner(
            LeaseTable(rt.settings.database_url, SCHEMA, member_id(), settings.partitions,
                       group=group.partitions if group is not None else None),
            on_acquire=on_acquire, on_release=on_release, on_leader=on_leader)
        batcher = IntakeBatcher(ledger, writer)
        durables = consumers(nc, ledger, writer, owner, batcher, group)
        authorizer = Authorizer(ledger, writer, owner)
        sweeper = Sweeper(ledger, writer, owner=owner)
        rt.state.update(consumers=durables, authorizer=authorizer, sweeper=sweeper,
                        followers=followers, ledger=ledger, writer=writer, owner=owner,
                        partition_consumers=partition_consumers)
        await authorizer.start(nc)
        commands.connect(nc, owner, databases)
        await owner.start()  # a lone process owns every partition before the first message
        for consumer in durables:
            await consumer.start()
        sweeper.start()
        rt.state["catalogue_check"] = asyncio.create_task(
            _check_catalogue(ledger, writer), name="catalogue-check")

    async def stop(rt: Runtime) -> None:
        if "ledger" not in rt.state:
            return
        # Stop taking work first, finish what is in hand, then close the store.
        rt.state["catalogue_check"].cancel()
        rt.state["reader_warm"].cancel()
        await rt.state["authorizer"].stop()
        log.info("stopped authorizer")
        for consumer in rt.state["consumers"]:
            await consumer.stop()
            log.info("stopped consumer", durable=consumer.durable)
        # Stops the partitions' consumers, then clears their leases and this member's row:
        # the other processes take them over at their next renewal.
        await rt.state["owner"].stop()
        await commands.stop()
        log.info("released partitions")
        await rt.state["sweeper"].stop()
        log.info("stopped sweeper")
        for followers in rt.state["followers"].values():
            await followers.stop()
        log.info("stopped followers (publisher, projections)")
        rt.state["writer"].close()
        await asyncio.to_thread(services.readers.close)
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
        wrap_http=commands.wrap,
    )


async def _check_catalogue(ledger: Ledger, writer: Writer) -> None:
    """Another ledger process may apply a catalogue update (the durable is shared): notice
    it, so this process prices with the new catalogue too."""
    while True:
        await asyncio.sleep(CATALOGUE_CHECK_INTERVAL_S)
        try:
            if await writer.call(ledger.refresh_catalogue):
                log.info("price catalogue changed elsewhere; reloaded")
        except Exception as exc:
            log.warning("catalogue check failed", error=f"{type(exc).__name__}: {exc}")


def reader_config(rt: Runtime, env: dict[str, str]) -> ReaderConfig:
    """The reader's stores: the primary and, with DATABASE_READ_URL, the replica (read-only,
    so it creates no tables; it connects on first use, so a replica that is down does not
    stop the start)."""
    settings = rt.settings
    assert isinstance(settings, LedgerSettings)
    sources = {PRIMARY: env}
    if settings.database_read_url:
        sources[REPLICA] = ledger_env(eventsourcing_env(
            settings.database_read_url, SCHEMA, CREATE_TABLE="n", POSTGRES_CONNECT_TIMEOUT="1"))
    return ReaderConfig(sources=sources, chain_keys=settings.chain_keys,
                        log_level=settings.log_level, log_format=settings.log_format)


def metrics(runtime: Runtime) -> list[ScrapeCollector]:
    """Lag of the followers (a process of their own: read from the database positions),
    of the durable consumers and the dead letters (asked of NATS), at each scrape."""

    async def followers() -> list[Any]:
        return await follower_metrics(runtime.pool)

    def durables() -> list[tuple[str, str]]:
        owned = runtime.state.get("partition_consumers", {})
        return [(c.stream, c.durable)
                for c in [*runtime.state.get("consumers", ()), *list(owned.values())]]

    connection = lambda: runtime.broker.connection  # noqa: E731 (connected after build)
    return [named("ledger-followers", followers), consumer_metrics(connection, durables),
            dead_letter_metrics(connection),
            stream_fill_metrics(connection, sorted(STREAM_LIMITS))]


def after_migrate(settings: ServiceSettings) -> None:
    """The event store's tables and the log's append-only trigger (the library makes them),
    then the runtime group role's rights over every table. A role that may not change the
    schema does neither (services/event_store.py, runtime_role.py)."""
    with psycopg.connect(conninfo(settings.database_url), autocommit=True) as conn:
        # Under the migrations' lock: ledger processes starting together on a new database
        # would race on CREATE TABLE IF NOT EXISTS (a unique violation in pg_type).
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"migrate:{SCHEMA}",))
        try:
            LedgerApplication(
                env=ledger_env(eventsourcing_env(settings.database_url, SCHEMA))).close()
            sync_runtime_rights(conn, SCHEMA)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"migrate:{SCHEMA}",))


def every_database(settings: ServiceSettings) -> list[ServiceSettings]:
    """`migrate` applies the schema to every database of LEDGER_DATABASES (each a complete
    ledger of its partitions), or to DATABASE_URL's alone without it."""
    assert isinstance(settings, LedgerSettings)
    databases = settings.database_map()
    if databases is None:
        return [settings]
    return [msgspec.structs.replace(settings, database_url=group.url) for group in databases]


SPEC = ServiceSpec(
    name="ledger_service",
    title="Ledger service",
    version="0.1.0",
    schema=SCHEMA,
    http_port_default=8001,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=LedgerSettings,
    after_migrate=after_migrate,
    databases=every_database,
)
