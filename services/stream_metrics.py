"""JetStream figures for `/metrics`, asked of NATS when scraped: each durable consumer's
backlog (pending: in the stream, not yet delivered; ack pending: delivered, not yet acked),
the dead letters kept per original subject, and how full each stream is.

A stream's bytes are bounded (services/broker.py) and a full stream refuses new messages
(DiscardPolicy.NEW): usage publishers then get errors and the ledger's publisher stops
announcing entries. At a sustained rate a stream fills long before its age limit clears it
(`make soak` filled the scaled-down USAGE and LEDGER streams in 11 minutes at 2,200 events/s),
so operators alert on `nats_stream_fill_ratio` (docs/operations.md).

Asked at scrape time, not counted in memory, so they are the server's own numbers whichever
process of a service answers the scrape, and right after a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from prometheus_client.core import GaugeMetricFamily, Metric

from contracts.subjects import DEADLETTER_PREFIX
from services.http.metrics import ScrapeCollector, named

DEADLETTER_STREAM: Final = "DEADLETTER"
NATS_REQUEST_TIMEOUT_S: Final = 2.0

# (stream, durable consumer name)
ConsumerName = tuple[str, str]


def consumer_metrics(connection: Callable[[], NATS],
                     consumers: Callable[[], Sequence[ConsumerName]]) -> ScrapeCollector:
    async def collect() -> Sequence[Metric]:
        pending = GaugeMetricFamily(
            "nats_consumer_pending_messages",
            "Messages in the stream the durable consumer has not been delivered yet.",
            labels=["stream", "consumer"])
        ack_pending = GaugeMetricFamily(
            "nats_consumer_ack_pending_messages",
            "Messages delivered to the durable consumer and not acknowledged yet.",
            labels=["stream", "consumer"])
        redelivered = GaugeMetricFamily(
            "nats_consumer_redelivered_messages",
            "Messages delivered more than once and not acknowledged yet.",
            labels=["stream", "consumer"])
        js = connection().jetstream()
        names = list(consumers())
        infos = await asyncio.gather(*(js.consumer_info(stream, durable,
                                                        timeout=NATS_REQUEST_TIMEOUT_S)
                                       for stream, durable in names), return_exceptions=True)
        for (stream, durable), info in zip(names, infos, strict=True):
            if isinstance(info, NotFoundError):
                continue  # not created yet (its service has not started): no backlog to show
            if isinstance(info, BaseException):
                raise info
            pending.add_metric([stream, durable], info.num_pending or 0)
            ack_pending.add_metric([stream, durable], info.num_ack_pending or 0)
            redelivered.add_metric([stream, durable], info.num_redelivered or 0)
        return [pending, ack_pending, redelivered]

    return named("nats-consumers", collect)


def dead_letter_metrics(connection: Callable[[], NATS]) -> ScrapeCollector:
    async def collect() -> Sequence[Metric]:
        letters = GaugeMetricFamily(
            "nats_dead_letters",
            "Dead letters kept in the DEADLETTER stream, by the subject the message came on.",
            labels=["subject"])
        try:
            info = await connection().jetstream().stream_info(DEADLETTER_STREAM,
                                                              subjects_filter=">")
        except NotFoundError:
            return [letters]
        for subject, count in sorted((info.state.subjects or {}).items()):
            letters.add_metric([subject.removeprefix(DEADLETTER_PREFIX)], count)
        total = GaugeMetricFamily("nats_dead_letter_stream_messages",
                                  "All dead letters kept in the DEADLETTER stream.")
        total.add_metric([], info.state.messages)
        return [letters, total]

    return named("nats-dead-letters", collect)


def stream_fill_metrics(connection: Callable[[], NATS],
                        streams: Sequence[str]) -> ScrapeCollector:
    async def collect() -> Sequence[Metric]:
        stored = GaugeMetricFamily("nats_stream_bytes", "Bytes the stream holds.",
                                   labels=["stream"])
        limit = GaugeMetricFamily("nats_stream_max_bytes",
                                  "The stream's byte limit (refuses new messages beyond it).",
                                  labels=["stream"])
        fill = GaugeMetricFamily("nats_stream_fill_ratio",
                                 "Bytes held over the byte limit: alert well before 1.",
                                 labels=["stream"])
        js = connection().jetstream()
        infos = await asyncio.gather(*(js.stream_info(name) for name in streams),
                                     return_exceptions=True)
        for name, info in zip(streams, infos, strict=True):
            if isinstance(info, NotFoundError):
                continue
            if isinstance(info, BaseException):
                raise info
            stored.add_metric([name], info.state.bytes)
            max_bytes = info.config.max_bytes or 0
            if max_bytes > 0:
                limit.add_metric([name], max_bytes)
                fill.add_metric([name], info.state.bytes / max_bytes)
        return [stored, limit, fill]

    return named("nats-stream-fill", collect)
