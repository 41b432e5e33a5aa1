"""What every service process does, in one place: read settings, configure logs, open the
database pool, apply migrations, connect to NATS, serve HTTP, and stop in reverse order.

A service package describes itself with a ``ServiceSpec``; its ``__main__`` calls ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import Any

import structlog
import uvicorn
from faststream.nats import NatsBroker
from litestar import Litestar
from psycopg_pool import AsyncConnectionPool

from services import fault_points
from services.broker import check_nats, create_broker, ensure_streams
from services.database import (
    apply_migrations,
    check_database,
    create_pool,
    ensure_database,
    redact_url,
)
from services.http import JwtVerifier, create_app
from services.http.metrics import ScrapeCollector, forget_process, multiprocess_directory
from services.logging import configure_logging
from services.read_replica import PROBE_TIMEOUT_S, ReadRouting
from services.settings import ServiceSettings, SettingsError, load_settings

log = structlog.get_logger(__name__)

Hook = Callable[["Runtime"], Awaitable[None]]


@dataclass(slots=True)
class Runtime:
    """The live resources of one service process, handed to its routes and subscribers."""

    settings: ServiceSettings
    pool: AsyncConnectionPool
    broker: NatsBroker
    verifier: JwtVerifier
    # Portal reads: the primary pool, and a replica's when DATABASE_READ_URL is set.
    reads: ReadRouting
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceParts:
    """What a service adds to the kernel: routes, subscribers' hooks, error mapping."""

    route_handlers: Sequence[Any] = ()
    exception_statuses: Mapping[type[Exception], tuple[int, str]] = field(default_factory=dict)
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    # After FastStream's subscribers have stopped (their handlers finished), before the pool
    # closes: resources those handlers use.
    after_subscribers: Sequence[Hook] = ()
    # Figures `/metrics` reads when scraped (lag, backlogs): services/http/metrics.py
    metrics: Sequence[ScrapeCollector] = ()
    # A layer of the service's own around its HTTP handling, inside the request context:
    # called with that handler and the whole application (the ledger's command routing).
    wrap_http: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str  # "ledger_service"
    title: str
    version: str
    schema: str  # the service's own PostgreSQL schema
    http_port_default: int
    migrations: Path
    # Called once per process with the not-yet-connected runtime: registers NATS
    # subscribers on runtime.broker and returns the HTTP routes and hooks.
    build: Callable[[Runtime], ServiceParts]
    settings_class: type[ServiceSettings] = ServiceSettings
    # Schema objects the migrations' SQL files do not make (the ledger's event store, made by
    # the eventsourcing library): made by `migrate` too, so that a role that may not create
    # them can run the service once the owner has migrated.
    after_migrate: Callable[[ServiceSettings], None] | None = None
    # The settings of every database the service's data lives in, for `migrate` (the
    # ledger's partition -> database map); None: DATABASE_URL's alone. A process's start-up
    # migrates its own database only.
    databases: Callable[[ServiceSettings], list[ServiceSettings]] | None = None


def load(spec: ServiceSpec, environ: Mapping[str, str] | None = None) -> ServiceSettings:
    return load_settings(
        spec.settings_class,
        service_name=spec.name,
        http_port_default=spec.http_port_default,
        environ=environ,
    )


def migrate(spec: ServiceSpec, settings: ServiceSettings) -> list[str]:
    ensure_database(settings.database_url)
    applied = apply_migrations(settings.database_url, spec.schema, spec.migrations)
    if spec.after_migrate is not None:
        spec.after_migrate(settings)
    return applied


def build_app(spec: ServiceSpec, settings: ServiceSettings) -> Litestar:
    """The Litestar app of a service, with its lifespan owning every resource."""
    pool = create_pool(
        settings.database_url, spec.schema, max_size=settings.db_pool_size_max, name=spec.name
    )
    runtime = Runtime(
        settings=settings,
        pool=pool,
        reads=ReadRouting(pool, read_pool(spec, settings),
                          lag_max_s=settings.database_read_lag_max_s),
        broker=create_broker(settings.nats_url, graceful_timeout_s=settings.shutdown_grace_s),
        verifier=JwtVerifier(
            secret=None if settings.jwt_jwks_url else settings.jwt_secret,
            jwks_url=settings.jwt_jwks_url,
            audience=settings.jwt_audience,
            service_secret=settings.jwt_service_secret,
        ),
    )
    parts = spec.build(runtime)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, spec, settings)
        await runtime.pool.open(wait=True, timeout=30)
        await runtime.reads.open()
        await runtime.broker.connect()
        await ensure_streams(runtime.broker, settings.nats_stream_replicas,
                             settings.nats_stream_bytes_scale)
        for hook in parts.on_startup:
            await hook(runtime)
        await runtime.broker.start()
        log.info("service started", port=settings.http_port, env=settings.app_env)
        try:
            yield
        finally:
            log.info("service stopping: draining in-flight messages")
            # The service's own consumers first, while NATS is still there to take their
            # acks; then FastStream's subscribers (it waits for handlers in flight).
            for hook in reversed(parts.on_shutdown):
                await hook(runtime)
            await runtime.broker.stop()
            for hook in parts.after_subscribers:
                await hook(runtime)
            await runtime.reads.close()
            await runtime.pool.close()
            forget_process()
            log.info("service stopped")

    async def database() -> None:
        await check_database(runtime.pool)

    async def nats() -> None:
        await check_nats(runtime.broker)

    app = create_app(
        title=spec.title,
        version=spec.version,
        route_handlers=list(parts.route_handlers),
        readiness_checks={"database": database, "nats": nats},
        auth=runtime.verifier,
        lifespan=[lifespan],
        exception_statuses=dict(parts.exception_statuses),
        metrics_collectors=parts.metrics,
    )
    app.state.runtime = runtime
    if parts.wrap_http is not None:
        context = app.asgi_handler  # the request context, outermost (services/http/app.py)
        context.app = parts.wrap_http(context.app, app)  # type: ignore[attr-defined]
    return app


def read_pool(spec: ServiceSpec, settings: ServiceSettings) -> AsyncConnectionPool | None:
    """The replica's pool: a connection it cannot give at once fails fast, since the read
    then goes to the primary (services/read_replica.py)."""
    if not settings.database_read_url:
        return None
    return create_pool(settings.database_read_url, spec.schema,
                       max_size=settings.db_pool_size_max, name=f"{spec.name}-read",
                       timeout_s=PROBE_TIMEOUT_S)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die of the
    signal; a service that drained and stopped cleanly exits 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (SIGINT, SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# A service allocates many short-lived objects per message; the default thresholds make the
# collector run full collections of the whole (long-lived) heap about once a second under
# load, 60-140 ms each (measured: bench/, docs/benchmarks.md). Objects alive after start-up
# are frozen out of collection and young generations are collected less often.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# How long a thread may hold the GIL while another waits for it. Python's default, 5 ms, is
# a whole latency budget: the ledger's writer thread and its event loop hand work to each
# other several times per authorization, and each hand-over could wait that long.
GIL_SWITCH_INTERVAL_S = float(os.environ.get("PYTHON_GIL_SWITCH_INTERVAL_S", "0.0005"))


def serve(spec: ServiceSpec, settings: ServiceSettings) -> None:
    app = build_app(spec, settings)
    tune_garbage_collector()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        server_header=False,
    )
    if settings.http_reuse_port and not multiprocess_directory():
        # Each scrape reaches one of the processes on the port: its counters alone would pass
        # for the service's (services/http/metrics.py).
        log.warning("HTTP_REUSE_PORT without PROMETHEUS_MULTIPROC_DIR: /metrics counts the"
                    " requests, writer jobs and authorizations of whichever process answers;"
                    " set PROMETHEUS_MULTIPROC_DIR to a directory the processes share")
    sockets = [reuse_port_socket(settings.http_host, settings.http_port)] \
        if settings.http_reuse_port else None
    _Server(config).run(sockets=sockets)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket other processes can bind too (SO_REUSEPORT): each process of a
    service started with HTTP_REUSE_PORT=true on the same port takes its share of the
    connections, and a stopping process's share goes to the others."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(spec: ServiceSpec, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {spec.name}",
        description=f"{spec.title}: serve HTTP and NATS, or apply database migrations.",
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    try:
        settings = load(spec)
    except SettingsError as exc:
        print(f"{spec.name}: cannot start: {exc}", file=sys.stderr)
        return 2
    configure_logging(service=spec.name, level=settings.log_level, fmt=settings.log_format)
    log.info(
        "configuration loaded",
        database=redact_url(settings.database_url),
        database_read=redact_url(settings.database_read_url) if settings.database_read_url
        else None,
        nats=settings.nats_url,
        command=args.command,
    )
    fault_points.arm(settings.fault_inject)
    if args.command == "migrate":
        for target in spec.databases(settings) if spec.databases else [settings]:
            applied = migrate(spec, target)
            log.info("migrations up to date", schema=spec.schema, applied=applied,
                     database=redact_url(target.database_url))
        return 0
    serve(spec, settings)
    return 0
