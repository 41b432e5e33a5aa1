"""Prometheus request metrics and the `/metrics` endpoint.

Litestar's PrometheusMiddleware is route middleware, so it never sees 404 and 405 answers
(routing fails before any route middleware runs); the request-context middleware wraps the
whole application and records here instead.

Two kinds of figures share `/metrics`:

- Counters and histograms of this process (requests). When several processes serve one port
  (HTTP_REUSE_PORT=true) a scrape reaches one of them, so these use prometheus-client's
  multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to a directory the processes of one service
  share (emptied before they start, e.g. a tmpfs or an emptyDir volume); each process writes
  its samples there and any of them answers a scrape with the sum of all.
- Figures read at scrape time (`ScrapeCollector`: lag, backlogs, dead letters) from the
  database or NATS, which are the same whichever process answers, so they need neither.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog
from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

# Figures computed when scraped (database positions, NATS consumer state), never stored.
ScrapeCollector = Callable[[], Awaitable[Sequence[Metric]]]

# prometheus-client reads this variable itself, at import; we read it to build the registry.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

_log = structlog.get_logger(__name__)
SCRAPE_COLLECTOR_TIMEOUT_S = 3.0

# Requests that matched no route share one label value, so scanners cannot explode cardinality.
UNMATCHED_ROUTE = "unmatched"

_LABELS = ("method", "route", "status")

REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    _LABELS,
)
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the last response byte, by route template, method and status.",
    _LABELS,
)


def record_request(*, method: str, route: str, status: int, duration_s: float) -> None:
    labels = {"method": method, "route": route, "status": str(status)}
    REQUESTS.labels(**labels).inc()
    REQUEST_DURATION.labels(**labels).observe(duration_s)


SCRAPE_ERRORS = Gauge(
    "metrics_scrape_collector_failed",
    "1 when a scrape-time collector failed on the last scrape (its figures are missing).",
    ["collector"], multiprocess_mode="liveall")


class _Collected(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def process_registry() -> CollectorRegistry:
    """This process's counters, or every process's in multiprocess mode."""
    directory = multiprocess_directory()
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def multiprocess_directory() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def forget_process() -> None:
    """At a clean stop in multiprocess mode, drop this process's live gauges (a queue it no
    longer has must not count in the sum); its counters stay, as totals should. A process that
    crashed cannot do this: its last gauge values stay until the directory is emptied, which
    is why the processes of a service start with an empty one."""
    directory = multiprocess_directory()
    if directory:
        multiprocess.mark_process_dead(os.getpid(), directory)


def named(name: str, collector: ScrapeCollector) -> ScrapeCollector:
    """`collector`, called `name` in metrics_scrape_collector_failed and the log."""
    collector.__qualname__ = name
    return collector


async def scrape(collectors: Sequence[ScrapeCollector]) -> bytes:
    families: list[Metric] = []
    for collector in collectors:
        name = getattr(collector, "__qualname__", repr(collector))
        try:
            # A scrape is not worth waiting long for: a stuck database or NATS shows as a
            # failed collector, and the request figures are still served.
            families.extend(await asyncio.wait_for(collector(), SCRAPE_COLLECTOR_TIMEOUT_S))
        except Exception as exc:  # a dead dependency must not hide the other figures
            _log.warning("metrics collector failed", collector=name, error=str(exc)[:200])
            SCRAPE_ERRORS.labels(collector=name).set(1)
        else:
            SCRAPE_ERRORS.labels(collector=name).set(0)
    collected = CollectorRegistry(auto_describe=False)
    collected.register(_Collected(families))
    return generate_latest(process_registry()) + generate_latest(collected)


def metrics_handler(collectors: Sequence[ScrapeCollector] = ()) -> HTTPRouteHandler:
    frozen = tuple(collectors)

    @get("/metrics", include_in_schema=False)
    async def metrics() -> Response[bytes]:
        return Response(await scrape(frozen), media_type=CONTENT_TYPE_LATEST)

    return metrics
