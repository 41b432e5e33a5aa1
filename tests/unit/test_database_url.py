"""DATABASE_URL keeps every libpq parameter on its way to each connection string we build:
the services' pools, the migrations, and the ledger's event store (eventsourcing)."""

from __future__ import annotations

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from services.database import (
    conninfo,
    create_pool,
    eventsourcing_env,
    parse_database_url,
    redact_url,
)

TLS_URL = ("postgresql://billing:s3cret@db.example:6432/billing"
           "?sslmode=verify-full&sslrootcert=/etc/ssl/root.crt&sslcert=/etc/ssl/c.crt"
           "&target_session_attrs=read-write&application_name=ledger"
           "&options=-c%20statement_timeout%3D5s")
TLS_PARAMS = {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/root.crt",
              "sslcert": "/etc/ssl/c.crt", "target_session_attrs": "read-write",
              "application_name": "ledger"}


def as_dict(info: str) -> dict[str, str]:
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(info).items()}


def test_parse_keeps_the_named_parts_and_every_other_parameter() -> None:
    parts = parse_database_url(TLS_URL)
    assert (parts.host, parts.port, parts.user, parts.password, parts.dbname) == (
        "db.example", 6432, "billing", "s3cret", "billing")
    assert {**parts.params} == {**TLS_PARAMS, "options": "-c statement_timeout=5s"}


def test_defaults_and_the_unix_socket_form_still_parse() -> None:
    bare = parse_database_url("postgresql:///")
    assert (bare.host, bare.port, bare.user, bare.dbname) == ("127.0.0.1", 5432, "postgres",
                                                              "postgres")
    socket = parse_database_url("postgresql://postgres@/billing?host=/run/pg&port=5433")
    assert (socket.host, socket.port, socket.dbname) == ("/run/pg", 5433, "billing")


def test_a_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        parse_database_url("mysql://root@localhost/db")


def test_conninfo_keeps_tls_options_and_appends_our_options_to_the_urls() -> None:
    info = as_dict(conninfo(TLS_URL, options="-c search_path=ledger,public"))
    assert {k: info[k] for k in TLS_PARAMS} == TLS_PARAMS
    assert info["options"] == "-c statement_timeout=5s -c search_path=ledger,public"
    assert info["connect_timeout"] == "5"
    assert as_dict(conninfo(TLS_URL, dbname="postgres"))["dbname"] == "postgres"


def test_the_pool_connection_string_carries_the_tls_options() -> None:
    pool = create_pool(TLS_URL, "payments", max_size=2, name="test")
    info = as_dict(pool.conninfo)  # type: ignore[arg-type]
    assert {k: info[k] for k in TLS_PARAMS} == TLS_PARAMS
    assert info["options"].endswith("-c search_path=payments,public")


def test_the_event_store_pool_carries_the_tls_options() -> None:
    env = Environment(env=eventsourcing_env(TLS_URL, "ledger"))
    factory = InfrastructureFactory.construct(env)
    try:
        pool = factory.datastore.pool  # type: ignore[attr-defined]
        info = as_dict(pool.conninfo)
        assert {k: info[k] for k in TLS_PARAMS} == TLS_PARAMS
        assert pool.kwargs["host"] == "db.example" and pool.kwargs["port"] == "6432"
    finally:
        factory.close()


def test_a_multi_host_url_reaches_the_event_store_as_libpq_has_it() -> None:
    url = "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write"
    env = eventsourcing_env(url, "ledger")
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("h1,h2", "5432,5433")
    assert parse_database_url(url).port == 5432


def test_redact_hides_the_password_wherever_the_url_has_it() -> None:
    assert "s3cret" not in redact_url(TLS_URL)
    assert "sslmode=verify-full" in redact_url(TLS_URL)
    assert "hunter2" not in redact_url("postgresql://u@h/db?password=hunter2&sslmode=require")
