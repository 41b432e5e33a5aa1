"""Raw baselines measured in the same run as the ledger figures, on the same servers.

- PostgreSQL: psycopg ``executemany`` of N rows shaped like an idempotency key plus the
  message as bytea, in one transaction; and the same rows as one ``INSERT ... SELECT unnest``
  (the statement the ledger's recorder uses for its side rows).
- NATS: nats-py ``publish_async`` of the same N usage messages (with ``Nats-Msg-Id``) to a
  stream configured like USAGE, alone; then a pull consumer fetching them in batches of
  5,000 and acking each message, as the ledger's consumer does, with no work in between:
  the ceiling of the JetStream part of intake for one Python process on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import nats
import psycopg
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from bench.stats import rate_per_s
from services.broker import DUPLICATE_WINDOW_HIGH_VOLUME_S
from services.database import conninfo

STREAM = "BENCH_BASELINE"
SUBJECT = "bench.baseline.usage"
DUPLICATE_WINDOW_S = DUPLICATE_WINDOW_HIGH_VOLUME_S  # as USAGE
FETCH_BATCH_SIZE = 5_000  # as the ledger's usage consumer
FETCH_TIMEOUT_S = 1.0

Message = tuple[str, UUID, bytes]  # Nats-Msg-Id (the event id), account id, JSON payload


# ------------------------------------------------------------------ PostgreSQL


def postgres_baselines(url: str, messages: Sequence[Message]) -> dict[str, Any]:
    rows = [("usage", event_id, account_id, payload) for event_id, account_id, payload in messages]
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_raw (scope text, key text, account_id uuid,"
                     " payload bytea, PRIMARY KEY (scope, key))")
        conn.commit()
        executemany_s = _timed_insert(conn, lambda cur: cur.executemany(
            "INSERT INTO bench_raw VALUES (%s, %s, %s, %s)", rows))
        unnest_s = _timed_insert(conn, lambda cur: cur.execute(
            "INSERT INTO bench_raw SELECT * FROM unnest(%s::text[], %s::text[], %s::uuid[],"
            " %s::bytea[])", [list(column) for column in zip(*rows, strict=True)]))
        conn.execute("DROP TABLE bench_raw")
        conn.commit()
    return {
        "rows": len(rows),
        "executemany_rate_per_s": round(rate_per_s(len(rows), executemany_s)),
        "unnest_rate_per_s": round(rate_per_s(len(rows), unnest_s)),
    }


def _timed_insert(conn: psycopg.Connection[Any], insert: Any) -> float:
    conn.execute("TRUNCATE bench_raw")
    conn.commit()
    started_s = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        insert(cur)
    return time.perf_counter() - started_s


# ------------------------------------------------------------------ NATS


async def nats_baselines(nats_url: str, messages: Sequence[Message]) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await _fresh_stream(js)
        publish_s = await publish_all(js, SUBJECT, messages)
        consume_s = await _consume_all(nc, js, len(messages))
        await js.delete_stream(STREAM)
    finally:
        await nc.close()
    return {
        "messages": len(messages),
        "publish_async_rate_per_s": round(rate_per_s(len(messages), publish_s)),
        "pull_fetch_ack_rate_per_s": round(rate_per_s(len(messages), consume_s)),
    }


async def _fresh_stream(js: JetStreamContext) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE,
                                     duplicate_window=DUPLICATE_WINDOW_S))


async def publish_all(js: JetStreamContext, subject: str, messages: Sequence[Message]) -> float:
    """Publish every message with publish_async; returns the seconds until the last PubAck.
    Raises if any publish was refused: a figure of lost messages would be worthless."""
    started_s = time.perf_counter()
    futures = [await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
               for msg_id, _, payload in messages]
    await js.publish_async_completed()
    elapsed_s = time.perf_counter() - started_s
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} publishes failed, first: {failed[0]!r}")
    return elapsed_s


async def _consume_all(nc: NATS, js: JetStreamContext, expected: int) -> float:
    """Fetch everything in batches of 5,000 and ack each message, as the ledger's consumer
    does, with no work in between; returns the seconds until the last ack is flushed."""
    sub = await js.pull_subscribe(SUBJECT, durable="baseline", stream=STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, max_ack_pending=50_000))
    started_s = time.perf_counter()
    await _consume(sub, expected)
    await nc.flush()
    return time.perf_counter() - started_s


async def _consume(sub: Any, expected: int) -> None:
    acked = 0
    while acked < expected:
        try:
            msgs = await sub.fetch(FETCH_BATCH_SIZE, timeout=FETCH_TIMEOUT_S)
        except nats.errors.TimeoutError:
            continue
        await asyncio.gather(*(m.ack() for m in msgs))
        acked += len(msgs)
