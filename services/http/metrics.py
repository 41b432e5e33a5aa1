"""Prometheus request metrics and the `/metrics` endpoint.

Litestar's PrometheusMiddleware is route middleware, so it never sees 404 and 405 answers
(routing fails before any route middleware runs); the request-context middleware wraps the
whole application and records here instead.
"""

from __future__ import annotations

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

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


def metrics_handler() -> HTTPRouteHandler:
    @get("/metrics", include_in_schema=False, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return metrics
