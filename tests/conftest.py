"""Test infrastructure: real PostgreSQL and real NATS.

``DATABASE_URL`` / ``NATS_URL`` name the servers (CI points them at the machine's own); when
unset, an embedded PostgreSQL and a nats-server from the wheels start under .run/test/.
Each test session gets a database of its own, dropped at the end, so the suite never sees
another run's rows. Our JetStream streams are deleted at the start of the session so that no
durable consumer or message of an earlier run leaks in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import psycopg
import pytest
import structlog
from psycopg import sql

from contracts.subjects import STREAMS
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.settings import DEVELOPMENT_CHAIN_KEYS, parse_keyring
from services import logging as services_logging
from services.database import conninfo, parse_database_url
from services.embedded import start_nats, start_postgres
from tests.integration.service_process import kill_leftovers

ROOT = Path(__file__).resolve().parent.parent

# As every ledger process configures itself at start-up: events written in-process by the tests
# carry keyed hashes, the same development keys the services and ledgerctl default to.
configure_chain_keys(parse_keyring(DEVELOPMENT_CHAIN_KEYS))
services_logging.CACHE_LOGGERS_ON_FIRST_USE = False
# ledgerctl run by a test must not read the anchors of a `make run` stack in this checkout
# (.run/anchors): an empty folder of the session's own.
os.environ["ANCHOR_DIR"] = tempfile.mkdtemp(prefix="anchors-cli-")
RUN_DIR = ROOT / ".run" / "test"


@dataclass(frozen=True, slots=True)
class Infra:
    database_url: str
    nats_url: str

    def service_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_PORT")}
        # Small streams: a test's services must start whatever the machine's free disk.
        env.setdefault("NATS_STREAM_BYTES_SCALE", "0.05")
        # Each service process anchors into a folder of its own: ledgerctl in a test reads
        # only the anchors of the database it checks.
        env.update(DATABASE_URL=self.database_url, NATS_URL=self.nats_url, LOG_FORMAT="json",
                   ANCHOR_DIR=tempfile.mkdtemp(prefix="anchors-"))
        env.update(extra)
        return env


def _with_database(url: str, name: str) -> str:
    parts = parse_database_url(url)
    if parts.host.startswith("/"):
        return f"postgresql://{parts.user}@/{name}?host={parts.host}&port={parts.port}"
    auth = parts.user + (f":{parts.password}" if parts.password else "")
    return f"postgresql://{auth}@{parts.host}:{parts.port}/{name}"


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    base_url = os.environ.get("DATABASE_URL")
    nats_url = os.environ.get("NATS_URL")
    nats_process = None
    if base_url is None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _, base_url = start_postgres(RUN_DIR, "postgres")
    if nats_url is None:
        nats_process = start_nats(RUN_DIR)
        nats_url = nats_process.url
    test_db = f"billing_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = conninfo(base_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(test_db)))
    asyncio.run(_delete_streams(nats_url))
    try:
        yield Infra(database_url=_with_database(base_url, test_db), nats_url=nats_url)
    finally:
        # A service process whose fixture failed half-way would live on (reparented to init,
        # still consuming from NATS): found once after a set-up error.
        for leftover in kill_leftovers():
            print(f"killed a service process a test left running: {leftover}")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(test_db))
            )
        if nats_process is not None:
            nats_process.stop()


async def _delete_streams(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in STREAMS:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
async def nats_client(infra: Infra) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(infra.nats_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(autouse=True)
def _clean_log_context() -> Iterator[None]:
    """A test that configures logging binds context for its own lines; none leaks onward."""
    yield
    structlog.contextvars.clear_contextvars()
