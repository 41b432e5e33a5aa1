"""Bearer JWT authentication: verifier, principal, guards and the `principal` dependency.

Claims (CONTRACTS.md): `sub`; `tenant_id`, the account id a portal token may see; `scope`, a
space-separated string or a list holding `portal` and/or `operator`. `exp` and `sub` are
required. Development signs HS256 with a shared secret; production verifies RS256/ES256
against the identity provider's JWKS.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.types import Guard

from contracts.text import is_storable_text

# Development only: lets a fresh checkout run and mint tokens with no configuration. Every
# deployed environment sets its own secret or, in production, a JWKS URL.
DEVELOPMENT_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"  # noqa: S105

OPERATOR = "operator"
PORTAL = "portal"
KNOWN_SCOPES = frozenset({OPERATOR, PORTAL})

SECURITY_SCHEME_NAME = "BearerToken"
BEARER_SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    bearer_format="JWT",
    description="JWT with claims sub, tenant_id and scope (portal and/or operator).",
)
# `security=BEARER_SECURITY` on a handler or router marks it as needing a token in OpenAPI.
BEARER_SECURITY: list[SecurityRequirement] = [{SECURITY_SCHEME_NAME: []}]

# RFC 7518 minimum for HS256: a key as long as the hash output.
_HS256_SECRET_BYTES_MIN = 32
_JWKS_ALGORITHMS = ("RS256", "ES256")
_JWKS_FETCH_TIMEOUT_S = 5.0
# Tokens verified lately, so a client that sends the same token on every request pays for
# the signature once: looked up by the exact token text, honoured only until its `exp`.
VERIFIED_TOKENS_CACHED_MAX = 10_000
_VERIFIER_STATE_KEY = "jwt_verifier"
_PRINCIPAL_STATE_KEY = "principal"


class TokenRejected(Exception):
    """The bearer token is malformed, forged, expired or carries unusable claims."""


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the verified claims of the bearer token."""

    sub: str
    tenant_id: str | None = None
    scopes: frozenset[str] = frozenset()

    @property
    def is_operator(self) -> bool:
        return OPERATOR in self.scopes

    def may_read_account(self, account_id: uuid.UUID | str) -> bool:
        """Operators read every account; a portal token reads only its own tenant.

        Callers answer False with 404, not 403, so a portal token cannot probe which account
        ids exist.
        """
        if self.is_operator:
            return True
        if PORTAL not in self.scopes or self.tenant_id is None:
            return False
        return _canonical_id(self.tenant_id) == _canonical_id(str(account_id))


def _canonical_id(value: str) -> str:
    # Account ids are UUIDs; compare them case- and format-insensitively.
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


class JwtVerifier:
    """Verifies bearer tokens: HS256 with `secret`, or RS256/ES256 from `jwks_url` when given.

    With a JWKS URL the secret is ignored, so a user's HS256 token can never pass in
    production. `service_secret` is the one exception: the services' own calls to each other
    (invoicing's renewals charging the ledger) carry HS256 tokens signed with a secret only
    the services hold (`JWT_SERVICE_SECRET`), accepted beside the identity provider's keys.
    """

    def __init__(
        self,
        secret: str | None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: int = 30,
        service_secret: str | None = None,
    ) -> None:
        if jwks_url is None:
            _check_secret(secret)
        if service_secret is not None:
            _check_secret(service_secret)
        self._secret = secret
        self._service_secret = service_secret
        self._jwks = (
            jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=_JWKS_FETCH_TIMEOUT_S)
            if jwks_url
            else None
        )
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s
        # token -> (principal, the instant it stops being accepted)
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        """Verify signature and claims; blocking when keys come from a JWKS URL.

        A token verified before is answered from memory until its expiry (plus the leeway
        ``jwt.decode`` allows): the same answer the signature check would give, since a token
        is immutable and nothing but time changes its verdict.
        """
        known = self._verified.get(token)
        if known is not None:
            principal, valid_until = known
            if time.time() <= valid_until:
                return principal
            del self._verified[token]
        key, algorithms = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(str(exc)) from exc
        principal = principal_from_claims(claims)
        if len(self._verified) >= VERIFIED_TOKENS_CACHED_MAX:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]) + self._leeway_s)
        return principal

    async def authenticate(self, token: str) -> Principal:
        """`verify` without blocking the event loop when a JWKS fetch may be needed."""
        if self._jwks is None or token in self._verified:
            return self.verify(token)
        return await asyncio.to_thread(self.verify, token)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if (self._service_secret is not None and _algorithm_of(token) == "HS256"
                and (self._jwks is not None or not self._signed_with(token, self._secret))):
            return self._service_secret, ["HS256"]
        if self._jwks is None:
            return self._secret, ["HS256"]
        try:
            return self._jwks.get_signing_key_from_jwt(token).key, list(_JWKS_ALGORITHMS)
        except jwt.PyJWKClientConnectionError:
            raise
        except jwt.PyJWTError as exc:
            raise TokenRejected(str(exc)) from exc


    @staticmethod
    def _signed_with(token: str, secret: str | None) -> bool:
        if secret is None:
            return False
        try:
            jwt.decode(token, secret, algorithms=["HS256"],
                       options={"verify_exp": False, "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError:
            return False
        return True


def _algorithm_of(token: str) -> str | None:
    try:
        return str(jwt.get_unverified_header(token).get("alg"))
    except jwt.PyJWTError:
        return None


def _check_secret(secret: str | None) -> None:
    if not secret or len(secret.encode()) < _HS256_SECRET_BYTES_MIN:
        raise ValueError(
            f"JWT secret must be at least {_HS256_SECRET_BYTES_MIN} bytes (or give a JWKS URL)"
        )


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    sub = claims.get("sub")
    tenant_id = claims.get("tenant_id")
    if not isinstance(sub, str) or not sub:
        raise TokenRejected("claim 'sub' must be a non-empty string")
    if not is_storable_text(sub):
        # `sub` becomes the actor recorded in events and statements (contracts.text).
        raise TokenRejected("claim 'sub' must not contain control characters")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise TokenRejected("claim 'tenant_id' must be a string")
    return Principal(sub=sub, tenant_id=tenant_id, scopes=parse_scopes(claims.get("scope")))


def parse_scopes(raw: object) -> frozenset[str]:
    """`scope` as RFC 8693 space-separated string, or as a list of strings."""
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return frozenset(raw)
    raise TokenRejected("claim 'scope' must be a string or a list of strings")


def mint_token(
    secret: str,
    *,
    sub: str,
    scopes: Iterable[str],
    tenant_id: str | None = None,
    ttl_s: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for development, tests and the `billing-token` CLI."""
    _check_secret(secret)
    scope_names = scopes.split() if isinstance(scopes, str) else scopes
    now_s = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "scope": " ".join(sorted(set(scope_names))),
        "iat": now_s,
        "exp": now_s + ttl_s,
    }
    optional = {"tenant_id": tenant_id, "aud": audience, "iss": issuer}
    claims.update({name: value for name, value in optional.items() if value is not None})
    return jwt.encode(claims, secret, algorithm="HS256")


def verifier_state(verifier: JwtVerifier) -> dict[str, Any]:
    """The app `state` entries through which guards and the dependency find the verifier."""
    return {_VERIFIER_STATE_KEY: verifier}


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException(
            detail="A bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    return token.strip()


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The request's principal, verified once per request and cached on its state."""
    cached = connection.state.get(_PRINCIPAL_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    verifier: JwtVerifier = connection.app.state[_VERIFIER_STATE_KEY]
    try:
        principal = await verifier.authenticate(bearer_token(connection))
    except TokenRejected as exc:
        raise NotAuthorizedException(
            detail=f"Invalid bearer token: {exc}",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc
    except jwt.PyJWKClientConnectionError as exc:
        # Our identity provider is unreachable: the token may be fine, so not a 401.
        raise ServiceUnavailableException(detail=f"JWKS unreachable: {exc}") from exc
    connection.state[_PRINCIPAL_STATE_KEY] = principal
    return principal


def requires_any_scope(*scopes: str) -> Guard:
    """Guard: 401 without a valid token, 403 unless the token holds one of `scopes`."""
    wanted = frozenset(scopes)
    if not wanted or not wanted <= KNOWN_SCOPES:
        raise ValueError(f"scopes must be among {sorted(KNOWN_SCOPES)}, got {sorted(wanted)}")
    challenge = f'Bearer error="insufficient_scope", scope="{" ".join(sorted(wanted))}"'

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        principal = await authenticate(connection)
        if principal.scopes.isdisjoint(wanted):
            raise PermissionDeniedException(
                detail=f"Requires scope: {' or '.join(sorted(wanted))}",
                headers={"WWW-Authenticate": challenge},
            )

    return guard


def requires_scope(scope: str) -> Guard:
    return requires_any_scope(scope)


async def _provide_principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return await authenticate(request)


# Registered by create_app as dependency `principal`; handlers declare
# `principal: CurrentPrincipal` (401 when the request carries no valid token).
provide_principal = Provide(_provide_principal)
CurrentPrincipal: TypeAlias = NamedDependency[Principal]
