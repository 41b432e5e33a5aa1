"""The transactional outbox (services/outbox.py) on real PostgreSQL and JetStream: nothing
committed is lost, nothing rolled back is sent, a re-send is de-duplicated by Nats-Msg-Id."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats
import psycopg
import pytest
from nats.js.errors import NotFoundError
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from contracts.payments import PaymentReceived
from contracts.subjects import PAYMENTS_RECEIVED
from services.broker import stream_config
from services.database import conninfo, create_pool
from services.outbox import OUTBOX_DDL, OutboxPublishError, OutboxRelay, enqueue, jetstream_publisher
from tests.conftest import Infra
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.streams import stream_messages

pytestmark = pytest.mark.integration

SCHEMA = "outbox_test"
CHANNEL = "outbox_test_channel"


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
    pool = create_pool(infra.database_url, SCHEMA, max_size=4, name="outbox-test")
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(infra.nats_url)
    js = client.jetstream()
    try:
        await js.stream_info("PAYMENTS")
    except NotFoundError:
        await js.add_stream(stream_config("PAYMENTS"))
    try:
        yield client
    finally:
        await client.close()


def received(account: uuid.UUID, n: int = 0) -> PaymentReceived:
    return PaymentReceived(
        payment_id=f"pay-outbox-{uuid.uuid4().hex}", provider="stripe",
        provider_reference=f"cs_{n}", account_id=account, purpose="topup",
        amount=f"{n + 1}.00", vat_amount="0.00", currency="GBP",
        received_at=datetime.now(tz=UTC),
    )


async def enqueue_all(pool: AsyncConnectionPool, messages: list[PaymentReceived],
                      *, channel: str | None = None) -> None:
    async with pool.connection() as conn, conn.transaction():
        for message in messages:
            await enqueue(conn, PAYMENTS_RECEIVED, message, channel=channel,
                          headers={"correlation_id": "test-correlation"})


async def on_stream(nc: nats.NATS, account: uuid.UUID) -> list[tuple[str, str, str]]:
    """(Nats-Msg-Id, amount, correlation id) of this account's messages, in stream order."""
    return [
        (headers.get("Nats-Msg-Id", ""), body["amount"], headers.get("correlation_id", ""))
        for _, body, headers in await stream_messages(nc, "PAYMENTS")
        if body.get("account_id") == str(account)
    ]


async def unsent(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                     ).fetchone()
    assert row is not None
    return int(row[0])


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_rows_committed_while_no_relay_ran_are_published_when_one_starts(
    pool: AsyncConnectionPool, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    messages = [received(account, n) for n in range(3)]
    await enqueue_all(pool, messages)  # committed; then the process "died" before publishing
    relay = OutboxRelay(pool, jetstream_publisher(lambda: nc), poll_interval_s=0.1)
    await relay.start()
    try:
        await eventually(lambda: _zero(unsent(pool)))
    finally:
        await relay.stop()
    assert await on_stream(nc, account) == [
        (m.payment_id, m.amount, "test-correlation") for m in messages]


async def _listening(pool: AsyncConnectionPool) -> bool:
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "{CHANNEL}"',))).fetchone()
    return row is not None and row[0] == 1


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_rolled_back_rows_are_never_published(
    pool: AsyncConnectionPool, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with pool.connection() as conn, conn.transaction():
            await enqueue(conn, PAYMENTS_RECEIVED, received(account))
            raise RuntimeError("the state change failed")
    relay = OutboxRelay(pool, jetstream_publisher(lambda: nc))
    assert await relay.relay_once() == 0
    assert await on_stream(nc, account) == []


async def test_a_resend_after_a_crash_before_marking_is_dropped_by_jetstream(
    pool: AsyncConnectionPool, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    await enqueue_all(pool, [received(account)])
    relay = OutboxRelay(pool, jetstream_publisher(lambda: nc))
    assert await relay.relay_once() == 1
    async with pool.connection() as conn:  # as if the process died before the UPDATE
        await conn.execute("UPDATE outbox SET sent_at = NULL")
    assert await relay.relay_once() == 1
    assert len(await on_stream(nc, account)) == 1


async def test_batches_are_bounded_and_keep_commit_order(
    pool: AsyncConnectionPool, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    messages = [received(account, n) for n in range(25)]
    await enqueue_all(pool, messages)
    relay = OutboxRelay(pool, jetstream_publisher(lambda: nc), batch_size_max=10)
    assert [await relay.relay_once() for _ in range(4)] == [10, 10, 5, 0]
    assert [amount for _, amount, _ in await on_stream(nc, account)] == [
        m.amount for m in messages]


async def test_a_nats_outage_keeps_the_rows_until_nats_is_back(
    pool: AsyncConnectionPool, infra: Infra
) -> None:
    host, port = infra.nats_url.removeprefix("nats://").rsplit(":", 1)
    account = uuid.uuid4()
    with TcpProxy(target_host=host, target_port=int(port)) as proxy:
        client = await nats.connect(f"nats://127.0.0.1:{proxy.port}", max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2)
        try:
            relay = OutboxRelay(pool, jetstream_publisher(lambda: client, timeout_s=0.5),
                                poll_interval_s=0.1, backoff_initial_s=0.05, backoff_max_s=0.2)
            proxy.cut()
            await enqueue_all(pool, [received(account)])
            with pytest.raises(OutboxPublishError):
                await relay.relay_once()
            assert await unsent(pool) == 1
            async with pool.connection() as conn:
                row = await (await conn.execute(
                    "SELECT attempts, last_error FROM outbox")).fetchone()
            assert row is not None and row[0] == 1 and row[1]
            proxy.restore()
            await relay.start()
            try:
                await eventually(lambda: _zero(unsent(pool)))
            finally:
                await relay.stop()
        finally:
            await client.close()
    checker = await nats.connect(infra.nats_url)
    try:
        # Published once, even though the first attempt may have reached NATS after all.
        assert len(await on_stream(checker, account)) == 1
    finally:
        await checker.close()


async def test_notify_at_commit_wakes_a_relay_that_would_otherwise_sleep(
    pool: AsyncConnectionPool, nc: nats.NATS
) -> None:
    account = uuid.uuid4()
    relay = OutboxRelay(pool, jetstream_publisher(lambda: nc), channel=CHANNEL,
                        poll_interval_s=300)
    await relay.start()
    try:
        # Once its listener is listening and its first pass is over, only a NOTIFY (or the
        # 300 s poll) can wake it.
        await eventually(lambda: _listening(pool))
        await asyncio.sleep(0.5)
        await enqueue_all(pool, [received(account)], channel=CHANNEL)
        await eventually(lambda: _zero(unsent(pool)))
    finally:
        await relay.stop()
    assert len(await on_stream(nc, account)) == 1


def test_the_ddl_is_the_one_the_payments_migration_uses() -> None:
    migration = (Path(__file__).resolve().parents[2] / "payments_service" / "migrations"
                 / "0001_payments.sql").read_text()
    assert OUTBOX_DDL.strip() in migration
