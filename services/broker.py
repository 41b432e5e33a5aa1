"""NATS wiring: a FastStream broker with msgspec, the JetStream streams, correlation ids.

The correlation id travels in the ``correlation_id`` header (FastStream's own name for it),
so a producer using plain nats-py sets that header and every log line the message causes in
any service carries the same id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

import structlog
from fast_depends.msgspec import MsgSpecSerializer
from faststream import BaseMiddleware
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from contracts.subjects import STREAMS
from services.backoff import Backoff
from services.http import current_correlation_id

log = structlog.get_logger(__name__)

DAY_S = 86_400
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Why each limit is what it is lives beside it in STREAM_LIMITS."""

    max_age_s: int
    max_bytes: int
    duplicate_window_s: int
    discard: DiscardPolicy = DiscardPolicy.NEW


# Retention is "limits" everywhere: several consumers read each stream at their own pace, and
# the ledger's event store, not NATS, is the record of money. DiscardPolicy.NEW makes a full
# stream refuse new messages (the producer sees an error and retries) instead of silently
# dropping the oldest unconsumed usage, which would be lost revenue.
# JetStream reserves each stream's max_bytes against the server's store, which by default is
# three quarters of the free disk when the server started: a stream that does not fit is
# refused ("insufficient storage resources"). These defaults reserve about 19 GiB; a
# deployment scales them with NATS_STREAM_BYTES_SCALE (make run's embedded NATS uses 0.1).
DUPLICATE_WINDOW_HIGH_VOLUME_S: Final = 120
STREAM_LIMITS: dict[str, StreamLimits] = {
    # Usage is replayable for a week after an outage; JetStream's duplicate window is the
    # first line of defence, the ledger's own event-id table (kept for ever) the second.
    # The window costs memory on every node: each id is kept for the window, and expired ids
    # stay reachable until JetStream compacts its list of them, so a node holds up to about
    # three windows' ids at ~80 bytes each (docs/scaling.md, "NATS memory"). At 600 s the
    # 20-minute soak's nodes grew by ~300 MiB each; two minutes (NATS's default) covers a
    # publisher's retries, and what comes later is the ledger's table's to refuse.
    "USAGE": StreamLimits(max_age_s=7 * DAY_S, max_bytes=8 * GIB,
                          duplicate_window_s=DUPLICATE_WINDOW_HIGH_VOLUME_S),
    # Ledger events feed projections in other services; a month covers a long outage. Their
    # consumers are idempotent by event id: the window only spares them most republished
    # copies (the publisher's, after a restart).
    "LEDGER": StreamLimits(max_age_s=30 * DAY_S, max_bytes=8 * GIB,
                           duplicate_window_s=DUPLICATE_WINDOW_HIGH_VOLUME_S),
    # Anchors prove the log years later: kept ten years, a few hundred bytes each.
    "ANCHORS": StreamLimits(max_age_s=3650 * DAY_S, max_bytes=GIB // 4, duplicate_window_s=DAY_S),
    # Payments and invoices are few and precious: a quarter, and a day-long duplicate window
    # because providers retry webhooks for hours.
    "PAYMENTS": StreamLimits(max_age_s=90 * DAY_S, max_bytes=1 * GIB, duplicate_window_s=DAY_S),
    "INVOICING": StreamLimits(max_age_s=90 * DAY_S, max_bytes=1 * GIB, duplicate_window_s=DAY_S),
    "CATALOG": StreamLimits(max_age_s=365 * DAY_S, max_bytes=GIB // 4, duplicate_window_s=DAY_S),
    # Dead letters wait for an operator; old ones drop first so new failures are never refused.
    "DEADLETTER": StreamLimits(
        max_age_s=90 * DAY_S, max_bytes=1 * GIB, duplicate_window_s=600,
        discard=DiscardPolicy.OLD,
    ),
}


def stream_config(name: str, replicas: int = 1, bytes_scale: float = 1.0) -> StreamConfig:
    limits = STREAM_LIMITS[name]
    return StreamConfig(
        name=name,
        subjects=list(STREAMS[name]),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=limits.max_age_s,
        max_bytes=max(1024**2, int(limits.max_bytes * bytes_scale)),
        duplicate_window=limits.duplicate_window_s,
        discard=limits.discard,
        num_replicas=replicas,
    )


# A JetStream cluster answers stream requests only once its nodes have elected a meta leader
# (a few seconds after they start, and again after losing the leader).
STREAMS_READY_TIMEOUT_S = 60.0


async def ensure_streams(broker: NatsBroker, replicas: int = 1, bytes_scale: float = 1.0,
                         timeout_s: float = STREAMS_READY_TIMEOUT_S) -> None:
    """Create each stream, or bring an existing one to the configured limits."""
    js = broker.connection.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout_s
    backoff = Backoff(0.2, 2.0)
    for name in STREAMS:
        config = stream_config(name, replicas, bytes_scale)
        while True:
            try:
                await _ensure_stream(js, name, config)
                break
            except (NatsTimeoutError, NoRespondersError, APIError) as exc:
                if not _not_ready_yet(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                wait_s = backoff.next_wait_s()
                log.info("JetStream not ready; retrying", stream=name, error=repr(exc),
                         retry_in_s=round(wait_s, 2))
                await asyncio.sleep(wait_s)


# "no suitable peers for placement": a cluster's meta leader, just elected, has not yet heard
# from enough peers to place every replica; it has a few seconds later.
JS_CLUSTER_NO_PEERS = 10005


def _not_ready_yet(exc: BaseException) -> bool:
    """The cluster is still settling (electing, or learning its peers): ask again later."""
    if isinstance(exc, (NatsTimeoutError, NoRespondersError, ServiceUnavailableError)):
        return True
    return isinstance(exc, APIError) and exc.err_code == JS_CLUSTER_NO_PEERS


async def _ensure_stream(js: Any, name: str, config: StreamConfig) -> None:
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream created", stream=name)
    else:
        await js.update_stream(config)


class CorrelationMiddleware(BaseMiddleware):
    """Binds the message's correlation id to the log context; forwards it on publish."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        with structlog.contextvars.bound_contextvars(
            correlation_id=msg.correlation_id, subject=getattr(msg.raw_message, "subject", None)
        ):
            return await call_next(msg)

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        # FastStream fills a fresh id into every publish, so "set it when missing" never
        # fires. Inside an HTTP request or a consumed message, that context's id wins: a
        # chain of messages keeps the id of the request that started it.
        context_id = current_correlation_id() or structlog.contextvars.get_contextvars().get(
            "correlation_id"
        )
        if context_id:
            cmd.correlation_id = context_id
        return await call_next(cmd)


def durable_pull(stream: str, durable: str, *, batch_size: int,
                 deliveries_max: int) -> dict[str, Any]:
    """The `broker.subscriber(...)` settings every service's durable consumer shares: a pull
    consumer on a stream the services declared at start-up, from the stream's beginning, acked
    only after the handler returned (a raised error naks it for redelivery), and dead-lettered
    by the handler before JetStream's delivery limit."""
    return {
        "stream": JStream(stream, declare=False),
        "durable": durable,
        "pull_sub": PullSub(batch_size=batch_size, timeout=5.0),
        "deliver_policy": DeliverPolicy.ALL,
        "config": ConsumerConfig(max_deliver=deliveries_max),
        "ack_policy": AckPolicy.NACK_ON_ERROR,
    }


def nats_servers(nats_url: str) -> list[str]:
    """NATS_URL may list a cluster's nodes, comma-separated: a client fails over among them."""
    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


def create_broker(nats_url: str, *, graceful_timeout_s: float = 10.0) -> NatsBroker:
    return NatsBroker(
        nats_servers(nats_url),
        serializer=MsgSpecSerializer(),
        middlewares=[CorrelationMiddleware],
        # Reconnect for ever: a NATS restart must not need a service restart; readiness
        # reports the outage meanwhile.
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        graceful_timeout=graceful_timeout_s,
        logger=None,
    )


async def check_nats(broker: NatsBroker) -> None:
    """Readiness: connected, and a PING/PONG round trip to the server succeeds."""
    connection = broker.connection
    if connection is None or not connection.is_connected:
        raise ConnectionError("not connected to NATS")
    await connection.flush(timeout=1)
