"""PostgreSQL wiring: one database, one schema per service, versioned SQL migrations.

Migrations are plain ordered ``.sql`` files in each service's ``migrations/`` folder. They are
applied at start-up under an advisory lock (so four services or two replicas starting at
once apply each file exactly once) and are immutable: a file whose checksum changed after it
was applied stops the start, because the schema it describes no longer matches the database.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5


class MigrationError(RuntimeError):
    """A migration failed, or an applied migration file was changed afterwards."""


# What a URL that names none of them means, as it did before every libpq parameter was kept.
URL_DEFAULTS: Mapping[str, str] = {"host": "127.0.0.1", "port": "5432", "user": "postgres",
                                   "dbname": "postgres"}


@dataclass(frozen=True, slots=True)
class ConnectionParts:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    # Every other libpq parameter of the URL (sslmode, sslrootcert, target_session_attrs,
    # options, application_name, ...), as libpq names them.
    params: Mapping[str, str] = field(default_factory=dict)


def url_parameters(url: str) -> dict[str, str]:
    """Every libpq parameter of a ``postgresql://`` URL, as psycopg (libpq) parses it, with
    our defaults for host, port, user and database.

    The query-string ``host`` form is how a unix-socket server (the embedded one) is named;
    every other query parameter (``sslmode=verify-full``, ``target_session_attrs``, ...) is
    kept, so nothing a deployment configures is dropped on the way to the connection."""
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ValueError("DATABASE_URL must start with postgresql://")
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None
    values = {key: str(value) for key, value in parsed.items() if value is not None}
    return {**URL_DEFAULTS, **values}


def parse_database_url(url: str) -> ConnectionParts:
    """The URL's connection parts; ``params`` holds every other libpq parameter."""
    values = url_parameters(url)
    named = {"host", "port", "user", "password", "dbname"}
    return ConnectionParts(
        host=values["host"],
        port=int(values["port"].split(",")[0]),  # the first of a multi-host URL's
        user=values["user"],
        password=values.get("password", ""),
        dbname=values["dbname"],
        params={key: value for key, value in values.items() if key not in named},
    )


def conninfo(url: str, **overrides: Any) -> str:
    """A libpq connection string for ``url`` with ``overrides`` applied.

    An ``options`` override (our ``-c search_path=...``) is appended to the URL's own
    ``options`` rather than replacing them, so a deployment's ``-c statement_timeout=...``
    survives; libpq applies them in order, so ours win where both set the same setting."""
    values: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, **url_parameters(url)}
    extra_options = overrides.pop("options", None)
    if extra_options:
        values["options"] = " ".join(filter(None, (values.get("options"), extra_options)))
    values.update(overrides)
    return psycopg.conninfo.make_conninfo(**values)


def with_database(url: str, dbname: str) -> str:
    """`url` naming the database `dbname` instead (same server, role and parameters)."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{dbname}").geturl()


def redact_url(url: str) -> str:
    """The URL without its password (in the authority or the query), for logs and errors."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if "password=" in parts.query:
        query = "&".join("password=***" if pair.startswith("password=") else pair
                         for pair in parts.query.split("&"))
        parts = parts._replace(query=query)
    return parts.geturl()


def eventsourcing_env(url: str, schema: str, **extra: str) -> dict[str, str]:
    """The environment the eventsourcing library reads, derived from DATABASE_URL."""
    values = url_parameters(url)  # strings as libpq has them: "h1,h2" for two hosts
    env = {
        # eventsourcing's own factory knows five parameters; ours hands the pool the rest
        "PERSISTENCE_MODULE": "services.event_store:PostgresFactory",
        "POSTGRES_CONNINFO": conninfo(url),
        "POSTGRES_DBNAME": values["dbname"],
        "POSTGRES_HOST": values["host"],
        "POSTGRES_PORT": values["port"],
        "POSTGRES_USER": values["user"],
        "POSTGRES_PASSWORD": values.get("password", ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
        "CREATE_TABLE": "y",
    }
    env.update(extra)
    return env


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. True when it was created."""
    target = parse_database_url(url).dbname
    with psycopg.connect(conninfo(url, dbname="postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        except psycopg.errors.DuplicateDatabase:
            return False  # another process created it between our check and our create
        return True


def apply_migrations(url: str, schema: str, folder: Path) -> list[str]:
    """Apply every not-yet-applied ``*.sql`` file of ``folder`` in name order. Returns them."""
    files = sorted(folder.glob("*.sql"))
    applied_now: list[str] = []
    with psycopg.connect(conninfo(url)) as conn, conn.transaction():
        # One lock per schema: concurrent starters wait, then find nothing left to do.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"migrate:{schema}",))
        if not may_create_in(conn, schema):
            _check_applied(conn, schema, files)
            return []
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema))
        )
        rows = conn.execute(
            sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(
                sql.Identifier(schema)
            )
        ).fetchall()
        known: Mapping[str, str] = dict(rows)
        for path in files:
            text = path.read_text(encoding="utf-8")
            checksum = _checksum(path)
            if path.name in known:
                if known[path.name] != checksum:
                    raise MigrationError(
                        f"migration {schema}/{path.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            try:
                conn.execute(text.encode())
            except psycopg.Error as exc:
                raise MigrationError(f"migration {schema}/{path.name} failed: {exc}") from exc
            conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version, checksum) VALUES (%s, %s)")
                .format(sql.Identifier(schema)),
                (path.name, checksum),
            )
            applied_now.append(path.name)
    if applied_now:
        log.info("migrations applied", schema=schema, files=applied_now)
    return applied_now


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_text(encoding="utf-8").encode()).hexdigest()


def may_create_in(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether the role connected may create objects in ``schema`` (or, before it exists, in
    the database): the schema's owner may, a least-privilege runtime role may not."""
    row = conn.cursor(row_factory=tuple_row).execute(
        "SELECT coalesce((SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace"
        " WHERE nspname = %s), has_database_privilege(current_database(), 'CREATE'))",
        (schema,)).fetchone()
    return bool(row and row[0])


def _check_applied(conn: psycopg.Connection[Any], schema: str, files: list[Path]) -> None:
    """For a role that may not change the schema: every migration must have been applied
    (by the owner, `python -m <service> migrate`), unchanged; else it cannot run."""
    try:
        rows = conn.execute(sql.SQL("SELECT version, checksum FROM {}.schema_migrations")
                            .format(sql.Identifier(schema))).fetchall()
    except psycopg.errors.UndefinedTable:
        rows = []
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(f"this role cannot read {schema}.schema_migrations ({exc}):"
                             " grant it the runtime rights first") from exc
    known: Mapping[str, str] = dict(rows)
    pending = [path.name for path in files
               if known.get(path.name) != _checksum(path)]
    if pending:
        raise MigrationError(
            f"{len(pending)} migration(s) of schema {schema} not applied ({', '.join(pending)})"
            " and this database role may not apply them: run `python -m <service> migrate`"
            " as the schema's owner first")


# A connection back in the pool for less than this is handed out again without a check.
POOL_CHECK_IDLE_S = 1.0


class _IdleCheck:
    """Checks a pooled connection before handing it out only when it has sat idle, so a
    restarted PostgreSQL costs one failed check instead of a failed request, while a busy
    pool does not pay a round trip per checkout (that was a third of a balance read's CPU).
    A connection that broke while in use is discarded by the pool when it is returned."""

    def __init__(self, idle_s: float = POOL_CHECK_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self._returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned_at[conn] = self.clock()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        returned_at = self._returned_at.get(conn)
        if returned_at is None or self.clock() - returned_at > self.idle_s:
            await AsyncConnectionPool.check_connection(conn)


def create_pool(url: str, schema: str, *, max_size: int, name: str,
                timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncConnectionPool:
    """An async pool whose connections use the service's schema first on the search path,
    checked before use when they have been idle (`_IdleCheck`)."""
    idle_check = _IdleCheck()
    return AsyncConnectionPool(
        conninfo(url, options=f"-c search_path={schema},public"),
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        check=idle_check.check,
        reset=idle_check.reset,
        timeout=timeout_s,
    )


async def check_database(pool: AsyncConnectionPool) -> None:
    """Readiness: a real round trip to PostgreSQL."""
    async with pool.connection(timeout=2) as conn:
        await conn.execute("SELECT 1")
