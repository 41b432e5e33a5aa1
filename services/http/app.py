"""`create_app`: the Litestar application every service serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.types import ControllerRouterHandler

from services.http.auth import (
    BEARER_SECURITY_SCHEME,
    SECURITY_SCHEME_NAME,
    JwtVerifier,
    provide_principal,
    verifier_state,
)
from services.http.bodies import JsonBodyMiddleware
from services.http.health import READINESS_TIMEOUT_S_DEFAULT, ReadinessCheck, health_handlers
from services.http.metrics import ScrapeCollector, metrics_handler
from services.http.middleware import RequestContextMiddleware
from services.http.openapi_components import complete_openapi_document
from services.http.options import answer_options_for_every_method
from services.http.problems import ExceptionStatuses, exception_handlers
from services.http.strict_bodies import strict_json_body

# No endpoint takes more than a webhook or a JSON command; Litestar's default is 10 MB.
REQUEST_BODY_BYTES_MAX = 1024 * 1024


def openapi_config(title: str, version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=version,
        path="/schema",
        components=Components(security_schemes={SECURITY_SCHEME_NAME: BEARER_SECURITY_SCHEME}),
    )


def create_app(
    *,
    title: str,
    version: str,
    route_handlers: Sequence[ControllerRouterHandler],
    readiness_checks: Mapping[str, ReadinessCheck],
    auth: JwtVerifier,
    lifespan: Sequence[Any] = (),
    dependencies: Mapping[str, Any] | None = None,
    exception_statuses: ExceptionStatuses | None = None,
    debug: bool = False,
    readiness_timeout_s: float = READINESS_TIMEOUT_S_DEFAULT,
    request_body_bytes_max: int = REQUEST_BODY_BYTES_MAX,
    metrics_collectors: Sequence[ScrapeCollector] = (),
) -> Litestar:
    """A service's HTTP application with health, metrics, OpenAPI, auth and problem+json.

    Routes are public unless a handler (or its router) carries a guard from `requires_scope`
    or `requires_any_scope`, or declares the `principal` dependency.
    """
    app = Litestar(
        route_handlers=[
            *route_handlers,
            *health_handlers(readiness_checks, readiness_timeout_s),
            metrics_handler(metrics_collectors),
        ],
        lifespan=list(lifespan),
        guards=[strict_json_body],
        dependencies={"principal": provide_principal, **(dependencies or {})},
        exception_handlers=exception_handlers(exception_statuses or {}),
        # Bodies are JSON, UTF-8 and shallow before any handler parses them (bodies.py).
        middleware=[JsonBodyMiddleware()],
        openapi_config=openapi_config(title, version),
        state=State(verifier_state(auth)),
        request_max_body_size=request_body_bytes_max,
        # Logging is structlog, configured by each service; Litestar's own logging would
        # duplicate exception logs and, in debug, print tracebacks of its own.
        logging_config=None,
        debug=debug,
    )
    answer_options_for_every_method(app)
    complete_openapi_document(app)
    # Outermost layer, so that 404 and 405 (raised while routing) carry request ids too.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    return app
