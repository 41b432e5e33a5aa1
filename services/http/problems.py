"""RFC 9457 problem details: the one place where exceptions become HTTP error bodies.

Every error the services answer (routing, validation, auth, domain, crash) leaves through
`problem_response`, so clients parse a single shape: `{type, title, status, detail,
instance}`, plus `errors: [{field, message, source}]` for validation failures and
`request_id` so a caller can quote it to support.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Request
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Response
from litestar.types import ExceptionHandlersMap

from services.http.middleware import current_request_id

PROBLEM_TYPE_BASE = "https://billing.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# Bounds on what one error body may carry, matching contracts.http.problem.
FIELD_ERRORS_MAX = 100
DETAIL_CHARS_MAX = 2000

# Exception type -> (HTTP status, problem type slug), given by each service for its domain errors.
ExceptionStatuses = Mapping[type[Exception], tuple[int, str]]

# Problem types are part of the contract, so they are spelled here (RFC 9110 names) rather than
# derived from http.HTTPStatus, whose names change between Python versions (413, 422).
_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition-failed",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "unprocessable-content",
    428: "precondition-required",
    429: "too-many-requests",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}
_SLUG_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Litestar reports a missing or unknown body member on the enclosing object, naming the member
# only in the message; the field a client needs is that member.
_FIELD_IN_MESSAGE = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
# Litestar raises missing query/header/path parameters as a ValidationException without `extra`.
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']+)'")
_UNEXPECTED_DETAIL = "An unexpected error occurred. Quote the request_id when reporting it."

_log = structlog.get_logger(__name__)


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One rejected input field (documentation shape; bodies are built as dicts)."""

    field: str
    message: str
    source: str | None = None


class ProblemDocument(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 9457 problem details as served (documentation shape for OpenAPI)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


def problem_type(slug: str) -> str:
    return f"{PROBLEM_TYPE_BASE}{slug}"


def status_slug(status: int) -> str:
    """`not-found` for 404: the default problem type of a status without a sharper one."""
    return _STATUS_SLUGS.get(status) or HTTPStatus(status).name.lower().replace("_", "-")


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    slug: str,
    detail: str,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail[:DETAIL_CHARS_MAX],
        "instance": request.url.path,
        "request_id": current_request_id(),
        **(extensions or {}),
    }
    return Response(
        content=body,
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI `responses=` for a handler: each status documented as problem+json."""
    return {
        status: ResponseSpec(
            data_container=ProblemDocument,
            media_type=PROBLEM_MEDIA_TYPE,
            description=HTTPStatus(status).phrase,
            generate_examples=False,
        )
        for status in statuses
    }


def field_errors(exc: ValidationException) -> list[dict[str, str]]:
    if isinstance(exc.extra, list):
        items = [item for item in exc.extra if isinstance(item, Mapping)]
        return [_field_error(item) for item in items[:FIELD_ERRORS_MAX]]
    if match := _MISSING_PARAMETER.search(exc.detail):
        kind, name = match.groups()
        return [{"field": name, "message": f"Missing required {kind} parameter", "source": kind}]
    return []


def _field_error(item: Mapping[str, Any]) -> dict[str, str]:
    message = str(item.get("message", "Invalid value"))
    source = item.get("source")
    source_name = str(getattr(source, "value", source)) if source is not None else "body"
    return {"field": _field_name(item.get("key"), message, source_name), "message": message,
            "source": source_name}


def _field_name(key: object, message: str, source: str) -> str:
    # The body parameter is called `data`; a key of `data` means the body itself.
    base = "" if key is None or (source == "body" and key == "data") else str(key)
    if named := _FIELD_IN_MESSAGE.search(message):
        return f"{base}.{named.group(1)}" if base else named.group(1)
    return base or source


def on_validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return problem_response(
        request,
        status=exc.status_code,
        slug="validation-error",
        title="Request validation failed",
        detail=exc.detail,
        extensions={"errors": field_errors(exc)},
    )


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        # Server-side details (a misconfiguration, a failed dependency) stay in the log.
        _log_failure("http.server_error", exc, status=status, detail=exc.detail)
        detail = _UNEXPECTED_DETAIL if status == 500 else HTTPStatus(status).description
        return problem_response(request, status=status, slug=status_slug(status),
                                detail=detail, headers=exc.headers)
    if isinstance(exc.__cause__, SerializationException):
        return problem_response(request, status=status, slug="malformed-body",
                                title="Malformed request body", detail=exc.detail)
    return problem_response(request, status=status, slug=status_slug(status), detail=exc.detail,
                            headers=_with_bearer_challenge(status, exc.headers))


def _with_bearer_challenge(status: int, headers: Mapping[str, str] | None) -> dict[str, str]:
    # RFC 9110: a 401 must say how to authenticate, whoever raised it.
    merged = dict(headers or {})
    if status == HTTPStatus.UNAUTHORIZED and "www-authenticate" not in map(str.lower, merged):
        merged["WWW-Authenticate"] = "Bearer"
    return merged


def on_unhandled_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    _log_failure("http.unhandled_exception", exc)
    return problem_response(request, status=500, slug=status_slug(500),
                            title="Internal server error", detail=_UNEXPECTED_DETAIL)


def _log_failure(event: str, exc: BaseException, **fields: Any) -> None:
    # The traceback as text rather than exc_info: renderers that show frame locals (rich,
    # structlog's dict tracebacks) would print the ASGI scope, Authorization header included.
    _log.error(event, exc_type=type(exc).__name__,
               traceback="".join(traceback.format_exception(exc)), **fields)


def domain_error_handler(
    statuses: ExceptionStatuses,
) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    def on_domain_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        status, slug = _lookup(statuses, type(exc))
        # Domain error messages are written for callers ("insufficient funds"): the detail.
        return problem_response(request, status=status, slug=slug, title=_title(slug),
                                detail=str(exc) or _title(slug))

    return on_domain_error


def _lookup(statuses: ExceptionStatuses, exc_type: type[Exception]) -> tuple[int, str]:
    return next(statuses[cls] for cls in exc_type.__mro__ if cls in statuses)


def _title(slug: str) -> str:
    return slug.replace("-", " ").capitalize()


def check_exception_statuses(statuses: ExceptionStatuses) -> None:
    for exc_type, (status, slug) in statuses.items():
        if not 400 <= status <= 599:
            raise ValueError(f"{exc_type.__name__}: status {status} is not an error status")
        if not _SLUG_PATTERN.fullmatch(slug):
            raise ValueError(f"{exc_type.__name__}: problem slug {slug!r} is not kebab-case")


def exception_handlers(statuses: ExceptionStatuses) -> ExceptionHandlersMap:
    """Litestar `exception_handlers=`: most specific class wins (Litestar walks the MRO)."""
    check_exception_statuses(statuses)
    on_domain_error = domain_error_handler(statuses)
    handlers: ExceptionHandlersMap = {exc_type: on_domain_error for exc_type in statuses}
    handlers[HTTPException] = on_http_exception
    handlers[ValidationException] = on_validation_error
    handlers[Exception] = on_unhandled_exception
    return handlers
