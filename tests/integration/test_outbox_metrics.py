"""The outbox backlog on /metrics (services/outbox_metrics.py), read from the table when
scraped: unsent messages and the age of the oldest; sent ones do not count."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.database import conninfo, create_pool
from services.outbox import OUTBOX_DDL
from services.outbox_metrics import outbox_metrics
from tests.conftest import Infra

pytestmark = pytest.mark.integration
SCHEMA = "outbox_metrics_test"


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(
        conninfo(infra.database_url), autocommit=True
    ) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(SCHEMA)))
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
        await conn.execute(OUTBOX_DDL.encode())
    pool = create_pool(infra.database_url, SCHEMA, max_size=2, name="outbox-metrics-test")
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def figures(pool: AsyncConnectionPool) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in await outbox_metrics(pool)()}


async def test_the_backlog_counts_unsent_rows_and_ages_the_oldest(
    pool: AsyncConnectionPool,
) -> None:
    assert await figures(pool) == {"outbox_unsent_messages": 0,
                                   "outbox_oldest_unsent_age_seconds": 0}
    async with pool.connection() as conn:
        for index, age_s in enumerate((120, 30, 5)):
            await conn.execute(
                "INSERT INTO outbox (subject, msg_id, payload, headers, created_at)"
                " VALUES ('payments.v1.received', %s, '\\x7b7d', '{}',"
                " now() - make_interval(secs => %s))", (f"m-{index}", age_s))
        await conn.execute("UPDATE outbox SET sent_at = now() WHERE msg_id = 'm-0'")
    found = await figures(pool)
    assert found["outbox_unsent_messages"] == 2
    assert 30 <= found["outbox_oldest_unsent_age_seconds"] < 60
