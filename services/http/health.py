"""Liveness (`/healthz`) and readiness (`/readyz`) endpoints."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Response

from services.http.problems import problem_response

ReadinessCheck = Callable[[], Awaitable[None]]

READINESS_TIMEOUT_S_DEFAULT = 2.0
_REASON_CHARS_MAX = 160
# Exception messages from drivers can quote a DSN; the probe body is readable by anyone.
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
_SECRET_ASSIGNMENT = re.compile(r"(?i)\b(password|passwd|pwd|secret|token)\s*=\s*\S+")

_log = structlog.get_logger(__name__)


def failure_reason(exc: BaseException) -> str:
    """A short, credential-free description of why a check failed."""
    lines = str(exc).strip().splitlines()
    first_line = lines[0] if lines else ""
    redacted = _SECRET_ASSIGNMENT.sub(r"\1=***", _URL_CREDENTIALS.sub(r"\1***@", first_line))
    reason = f"{type(exc).__name__}: {redacted}" if redacted else type(exc).__name__
    return reason[:_REASON_CHARS_MAX]


async def run_check(check: ReadinessCheck, timeout_s: float) -> str:
    try:
        await asyncio.wait_for(check(), timeout_s)
    except TimeoutError:
        return f"timed out after {timeout_s:g} s"
    except Exception as exc:
        return failure_reason(exc)
    return "ok"


async def run_checks(checks: Mapping[str, ReadinessCheck], timeout_s: float) -> dict[str, str]:
    names = list(checks)
    outcomes = await asyncio.gather(*(run_check(checks[name], timeout_s) for name in names))
    return dict(zip(names, outcomes, strict=True))


def health_handlers(
    checks: Mapping[str, ReadinessCheck], timeout_s: float = READINESS_TIMEOUT_S_DEFAULT
) -> list[HTTPRouteHandler]:
    frozen_checks = dict(checks)

    @get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", tags=["operations"], summary="Readiness: every dependency answers")
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        outcomes = await run_checks(frozen_checks, timeout_s)
        failed = sorted(name for name, outcome in outcomes.items() if outcome != "ok")
        if not failed:
            return Response({"status": "ready", "checks": outcomes})
        _log.warning("http.not_ready", failed=failed, checks=outcomes)
        return problem_response(
            request,
            status=503,
            slug="not-ready",
            title="Service not ready",
            detail=f"Readiness checks failed: {', '.join(failed)}",
            extensions={"checks": outcomes},
        )

    return [healthz, readyz]
