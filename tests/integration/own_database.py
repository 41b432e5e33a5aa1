"""A database of a test module's own, on the session's server, dropped afterwards: a service
whose schema other modules also write (sync) starts from nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from services.database import conninfo, parse_database_url
from tests.conftest import Infra


@contextmanager
def own_database(infra: Infra, label: str) -> Iterator[Infra]:
    name = f"billing_{label}_{uuid.uuid4().hex[:8]}"
    admin = conninfo(infra.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = parse_database_url(infra.database_url)
    if parts.host.startswith("/"):
        url = f"postgresql://{parts.user}@/{name}?host={parts.host}&port={parts.port}"
    else:
        auth = parts.user + (f":{parts.password}" if parts.password else "")
        url = f"postgresql://{auth}@{parts.host}:{parts.port}/{name}"
    try:
        yield Infra(database_url=url, nats_url=infra.nats_url)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
