"""The outbox's backlog for `/metrics`, read from the service's own outbox table when
scraped (services/outbox.py): how many committed messages wait for the relay, and how long
the oldest of them has waited. A relay that cannot reach NATS shows as a growing age."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg_pool import AsyncConnectionPool

from services.http.metrics import ScrapeCollector, named

# outbox_unsent (a partial index on unsent rows) makes both figures an index scan of the
# backlog only.
BACKLOG_SQL: Final = (
    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)"
    "::float8 FROM outbox WHERE sent_at IS NULL")


def outbox_metrics(pool: AsyncConnectionPool) -> ScrapeCollector:
    async def collect() -> Sequence[Metric]:
        async with pool.connection() as conn:
            row = await (await conn.execute(BACKLOG_SQL)).fetchone()
        unsent, oldest_s = (int(row[0]), float(row[1])) if row else (0, 0.0)
        backlog = GaugeMetricFamily("outbox_unsent_messages",
                                    "Committed outbox messages not yet published to NATS.")
        backlog.add_metric([], unsent)
        age = GaugeMetricFamily("outbox_oldest_unsent_age_seconds",
                                "How long the oldest unpublished outbox message has waited;"
                                " 0 when none waits.")
        age.add_metric([], max(oldest_s, 0.0))
        return [backlog, age]

    return named("outbox", collect)
