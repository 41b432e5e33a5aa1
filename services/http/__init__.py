"""The HTTP kernel shared by the ledger, payments, invoicing and sync services."""

from services.http.app import REQUEST_BODY_BYTES_MAX, create_app
from services.http.auth import (
    BEARER_SECURITY,
    DEVELOPMENT_JWT_SECRET,
    OPERATOR,
    PORTAL,
    CurrentPrincipal,
    JwtVerifier,
    Principal,
    TokenRejected,
    mint_token,
    requires_any_scope,
    requires_scope,
)
from services.http.health import ReadinessCheck
from services.http.middleware import (
    CORRELATION_ID_HEADER,
    REQUEST_ID_HEADER,
    current_correlation_id,
    current_request_id,
)
from services.http.problems import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_BASE,
    ExceptionStatuses,
    problem_response,
    problem_responses,
    problem_type,
)

__all__ = [
    "BEARER_SECURITY",
    "CORRELATION_ID_HEADER",
    "DEVELOPMENT_JWT_SECRET",
    "OPERATOR",
    "PORTAL",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "REQUEST_BODY_BYTES_MAX",
    "REQUEST_ID_HEADER",
    "CurrentPrincipal",
    "ExceptionStatuses",
    "JwtVerifier",
    "Principal",
    "ReadinessCheck",
    "TokenRejected",
    "create_app",
    "current_correlation_id",
    "current_request_id",
    "mint_token",
    "problem_response",
    "problem_responses",
    "problem_type",
    "requires_any_scope",
    "requires_scope",
]
