"""The parameters of DATABASE_URL reach real PostgreSQL sessions: a service pool's and the
ledger's event store's (the settings are read back from the server)."""

from __future__ import annotations

import asyncio

import pytest

from services.database import create_pool, eventsourcing_env
from tests.conftest import Infra
from tests.integration.ledger_fixtures import build_ledger

pytestmark = pytest.mark.integration


def with_params(url: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}application_name=billing-url-test&options=-c%20statement_timeout%3D4321"


def test_a_service_pool_session_has_the_urls_parameters(infra: Infra) -> None:
    async def read() -> tuple[str, str, str]:
        pool = create_pool(with_params(infra.database_url), "payments", max_size=1, name="t")
        await pool.open()
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute(
                    "SELECT current_setting('application_name'),"
                    " current_setting('statement_timeout'), current_setting('search_path')"
                )).fetchone()
                assert row is not None
                return row  # type: ignore[no-any-return]
        finally:
            await pool.close()

    assert asyncio.run(read()) == ("billing-url-test", "4321ms", "payments,public")


def test_the_event_store_session_has_the_urls_parameters(infra: Infra) -> None:
    url = with_params(infra.database_url)
    ledger = build_ledger(Infra(database_url=url, nats_url=infra.nats_url))
    try:
        env = eventsourcing_env(url, "ledger")
        assert env["PERSISTENCE_MODULE"] == "services.event_store:PostgresFactory"
        datastore = ledger.app.factory.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            row = conn.execute("SELECT current_setting('application_name') AS name,"
                               " current_setting('statement_timeout') AS timeout").fetchone()
        assert (row["name"], row["timeout"]) == ("billing-url-test", "4321ms")
    finally:
        ledger.app.close()
