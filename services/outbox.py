"""Transactional outbox: messages committed with the state change, published by a relay.

A service that writes PostgreSQL and publishes to NATS cannot do both atomically; so it
writes the message into its own schema's ``outbox`` table in the same transaction as the
change (``enqueue``), and a relay task (``OutboxRelay``) publishes unsent rows to JetStream,
setting ``Nats-Msg-Id`` to the message's idempotency key, and marks them sent only after the
PubAck. If the process dies between commit and publish, the row is still there and the next
relay publishes it; if it dies between PubAck and marking, the row is published again and
JetStream's duplicate window drops it (consumers are idempotent beyond the window).

Each service that uses it creates the table in one of its own migrations (``OUTBOX_DDL``).
The relay wakes on ``LISTEN`` (``enqueue`` sends ``NOTIFY`` at commit), on ``wake()`` from
the same process, and otherwise polls, so a lost notification delays a message by at most
one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import psycopg
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from contracts.subjects import DEADLETTERS, NATS_MSG_ID_FIELD, subject_matches
from services import fault_points
from services.backoff import Backoff

log = structlog.get_logger(__name__)

OUTBOX_DDL: Final = """
CREATE TABLE outbox (
    outbox_id   bigserial PRIMARY KEY,
    subject     text NOT NULL,
    msg_id      text NOT NULL CHECK (length(msg_id) BETWEEN 1 AND 128),
    payload     bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX outbox_unsent ON outbox (outbox_id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
"""

MSG_ID_HEADER: Final = "Nats-Msg-Id"
# A relay batch is one transaction holding its rows' locks while it waits for PubAcks: small
# enough that a NATS stall holds little, large enough to amortise the round trips.
BATCH_SIZE_MAX: Final = 100
LAST_ERROR_CHARS_MAX: Final = 500

Publish = Callable[[str, bytes, Mapping[str, str]], Awaitable[None]]


def message_id(subject: str, message: msgspec.Struct) -> str:
    """The idempotency key a message is published under (contracts.subjects says which)."""
    field = next(
        (name for pattern, name in NATS_MSG_ID_FIELD.items()
         if pattern == subject or (pattern == DEADLETTERS and subject_matches(pattern, subject))),
        None,
    )
    if field is None:
        raise ValueError(f"no idempotency field is defined for subject {subject}")
    value = getattr(message, field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{subject}: {field} must be a non-empty string")
    return value


async def enqueue(
    conn: psycopg.AsyncConnection[Any],
    subject: str,
    message: msgspec.Struct,
    *,
    channel: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Add a message to the outbox inside the caller's transaction.

    Nothing is sent unless that transaction commits. With `channel`, the relay listening on
    it is notified at commit.
    """
    payload = msgspec.json.encode(message)
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, headers) VALUES (%s, %s, %s, %s)",
        (subject, message_id(subject, message), payload, Jsonb(dict(headers or {}))),
    )
    if channel:
        await conn.execute("SELECT pg_notify(%s, '')", (channel,))


def jetstream_publisher(connection: Callable[[], NatsClient], timeout_s: float = 5.0) -> Publish:
    """Publish with the PubAck awaited. `connection` is called each time, so a client that
    was replaced (reconnect, restart) is picked up."""

    async def publish(subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        js = connection().jetstream()
        await js.publish(subject, payload, timeout=timeout_s, headers=dict(headers))

    return publish


@dataclass(frozen=True, slots=True)
class _Row:
    outbox_id: int
    subject: str
    msg_id: str
    payload: bytes
    headers: dict[str, str]


class OutboxRelay:
    """Publishes committed outbox rows, batch by batch, oldest row first.

    Order is not a promise: a batch's messages are published concurrently (their PubAcks
    awaited together), a failed message is retried after later ones went out, and two relays
    of one service publish disjoint batches side by side. Consumers of our subjects are
    order-insensitive by contract (every message carries its own key and state).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        publish: Publish,
        *,
        channel: str | None = None,
        batch_size_max: int = BATCH_SIZE_MAX,
        poll_interval_s: float = 1.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 15.0,
        sent_retention_s: float = 7 * 86_400,
        name: str = "outbox",
    ) -> None:
        assert 1 <= batch_size_max <= 1_000 and poll_interval_s > 0
        self._pool = pool
        self._publish = publish
        self._channel = channel
        self._batch_size_max = batch_size_max
        self._poll_interval_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._sent_retention_s = sent_retention_s
        self._name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """Publish soon: called after a commit that enqueued messages."""
        self._wake.set()

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [asyncio.create_task(self._run(), name=f"{self._name}-relay")]
        if self._channel:
            self._tasks.append(asyncio.create_task(self._listen(), name=f"{self._name}-listen"))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the batch in flight; rows not yet marked are published by the next run."""
        self._stopping.set()
        self._wake.set()
        if not self._tasks:
            return
        relay, *listeners = self._tasks
        for task in listeners:  # it waits on the database for a NOTIFY that may never come
            task.cancel()
        _done, pending = await asyncio.wait([relay], timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; returns how many were marked sent."""
        async with self._pool.connection() as conn, conn.transaction():
            rows = await self._claim(conn)
            if not rows:
                return 0
            # Committed, claimed, not published: the window the fault tests must hit.
            fault_points.reach("outbox.before_publish")
            results = await asyncio.gather(
                *(self._publish(row.subject, row.payload, self._headers(row)) for row in rows),
                return_exceptions=True,
            )
            sent = [row.outbox_id for row, result in zip(rows, results, strict=True)
                    if not isinstance(result, BaseException)]
            failed = [(row, result) for row, result in zip(rows, results, strict=True)
                      if isinstance(result, BaseException)]
            if sent:
                await conn.execute(
                    "UPDATE outbox SET sent_at = now(), attempts = attempts + 1"
                    " WHERE outbox_id = ANY(%s)",
                    (sent,),
                )
            for row, error in failed:
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = %s"
                    " WHERE outbox_id = %s",
                    (f"{type(error).__name__}: {error}"[:LAST_ERROR_CHARS_MAX], row.outbox_id),
                )
        if failed:
            first_error = failed[0][1]
            raise OutboxPublishError(
                f"{len(failed)} of {len(rows)} messages not acknowledged: {first_error!r}"
            ) from first_error
        return len(sent)

    async def purge_sent(self) -> int:
        """Drop rows sent longer ago than the retention (which outlasts any duplicate window)."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => %s)",
                (self._sent_retention_s,),
            )
            return cursor.rowcount

    async def _claim(self, conn: psycopg.AsyncConnection[Any]) -> list[_Row]:
        # SKIP LOCKED: two replicas of a service relay disjoint batches instead of waiting.
        cursor = await conn.execute(
            "SELECT outbox_id, subject, msg_id, payload, headers FROM outbox"
            " WHERE sent_at IS NULL ORDER BY outbox_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (self._batch_size_max,),
        )
        return [
            _Row(outbox_id=r[0], subject=r[1], msg_id=r[2], payload=bytes(r[3]),
                 headers=dict(r[4] or {}))
            for r in await cursor.fetchall()
        ]

    @staticmethod
    def _headers(row: _Row) -> dict[str, str]:
        return {**row.headers, MSG_ID_HEADER: row.msg_id}

    async def _run(self) -> None:
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        loops = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                sent = await self.relay_once()
                loops += 1
                if loops % 3_600 == 0:
                    await self.purge_sent()
            except (OutboxPublishError, NatsError, TimeoutError, OSError, psycopg.Error) as exc:
                wait_s = backoff.next_wait_s()
                log.warning("outbox.relay_failed", relay=self._name, error=str(exc),
                            retry_in_s=round(wait_s, 2))
                await self._sleep(wait_s)
                continue
            except Exception as exc:
                # A bug must not end the relay: messages would then wait for a restart.
                log.error("outbox.relay_crashed", relay=self._name, error=repr(exc))
                await self._sleep(self._backoff_max_s)
                continue
            backoff.reset()
            if sent >= self._batch_size_max:
                continue  # more are probably waiting
            await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _listen(self) -> None:
        """Wake the relay on NOTIFY; reconnects for ever, polling covers the gaps."""
        assert self._channel is not None
        conninfo = self._pool.conninfo
        if not isinstance(conninfo, str):
            return  # a pool whose conninfo is computed per connection: polling only
        while not self._stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._wake.set()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self._wake.set()
                        if self._stopping.is_set():
                            return
            except (psycopg.Error, OSError) as exc:
                log.info("outbox.listen_interrupted", relay=self._name, error=str(exc))
                await self._sleep(self._backoff_max_s / 3)


class OutboxPublishError(RuntimeError):
    """Some messages of a batch were not acknowledged by JetStream; they stay unsent."""
