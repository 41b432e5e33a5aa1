"""Xero's HTTP APIs: identity (token, revocation), `/connections`, and the accounting API.

Every accounting call is paced per organisation (`Pacer`) and classified into the domain's
provider outcomes: 401 unauthorized, 429 rate limited (with Retry-After), 400 validation
(Xero's `Elements[].ValidationErrors` joined into the message), 5xx / network / timeout
unavailable, where a timeout or a dropped connection leaves the outcome unknown. Reads
(`GET`) are retried here with stamina; writes are retried by the sync queue, which looks a
document up before re-creating it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import msgspec
import stamina
import structlog

from services.logging import register_secret, scrub
from sync_service.app.pacing import Pacer
from sync_service.domain.errors import (
    GrantBroken,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnauthorized,
    ProviderUnavailable,
)

log = structlog.get_logger(__name__)

API_PATH: Final = "/api.xro/2.0"
_ERROR_CHARS_MAX: Final = 500
_RETRY_AFTER_DEFAULT_S: Final = 1.0
_RETRY_AFTER_MAX_S: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    refresh_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Tenant:
    connection_id: str  # Xero's /connections id
    tenant_id: str
    name: str


class XeroClient:
    def __init__(self, *, client_id: str, client_secret: str | None, redirect_uri: str,
                 scopes: str, login_base: str, identity_base: str, api_base: str,
                 timeout_s: float, pacer: Pacer,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._redirect_uri = redirect_uri
        self._scopes = scopes
        self._login_base = login_base.rstrip("/")
        self._identity_base = identity_base.rstrip("/")
        self._api_base = api_base.rstrip("/")
        self.pacer = pacer
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits,
                                       transport=transport)
        register_secret(client_secret)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- identity ----------------------------------------------------------------------------------

    def authorize_url(self, *, state: str, code_challenge: str) -> str:
        query = urlencode({
            "response_type": "code", "client_id": self._client_id,
            "redirect_uri": self._redirect_uri, "scope": self._scopes, "state": state,
            "code_challenge": code_challenge, "code_challenge_method": "S256",
        })
        return f"{self._login_base}/identity/connect/authorize?{query}"

    async def exchange_code(self, code: str, verifier: str) -> TokenSet:
        register_secret(code)
        register_secret(verifier)
        return await self._token({"grant_type": "authorization_code", "code": code,
                                  "redirect_uri": self._redirect_uri,
                                  "code_verifier": verifier})

    async def refresh(self, refresh_token: str) -> TokenSet:
        register_secret(refresh_token)
        return await self._token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def revoke(self, refresh_token: str) -> None:
        response = await self._identity_post("/connect/revocation", {"token": refresh_token})
        if response.status_code >= 400:
            raise ProviderRejected(f"revocation answered {response.status_code}",
                                   status=response.status_code)

    async def _token(self, form: dict[str, str]) -> TokenSet:
        response = await self._identity_post("/connect/token", form)
        if response.status_code == 400 and _json(response).get("error") == "invalid_grant":
            raise GrantBroken("Xero refused the grant (invalid_grant)", status=400)
        if response.status_code >= 500:
            raise ProviderUnavailable(f"Xero identity answered {response.status_code}",
                                      status=response.status_code)
        if response.status_code != 200:
            error = _json(response).get("error", "")
            raise ProviderRejected(f"Xero identity answered {response.status_code} {error}",
                                   status=response.status_code)
        body = _json(response)
        tokens = TokenSet(
            access_token=str(body["access_token"]), refresh_token=str(body["refresh_token"]),
            expires_at=datetime.now(UTC) + timedelta(seconds=float(body.get("expires_in", 1800))),
        )
        register_secret(tokens.access_token)
        register_secret(tokens.refresh_token)
        return tokens

    async def _identity_post(self, path: str, form: dict[str, str]) -> httpx.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Accept": "application/json"}
        if self._client_secret:
            basic = base64.b64encode(f"{self._client_id}:{self._client_secret}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        else:
            form = {**form, "client_id": self._client_id}
        try:
            return await self._http.post(self._identity_base + path, content=urlencode(form),
                                         headers=headers)
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"Xero identity unreachable: {type(exc).__name__}") \
                from None

    async def tenants(self, access_token: str) -> list[Tenant]:
        response = await self._plain_get(self._api_base + "/connections", access_token)
        return [Tenant(connection_id=str(t["id"]), tenant_id=str(t["tenantId"]),
                       name=str(t.get("tenantName") or t["tenantId"]))
                for t in _json_list(response) if t.get("tenantType", "ORGANISATION")
                == "ORGANISATION"]

    async def delete_connection(self, access_token: str, xero_connection_id: str) -> None:
        try:
            response = await self._http.delete(
                f"{self._api_base}/connections/{xero_connection_id}",
                headers={"Authorization": f"Bearer {access_token}"})
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"Xero unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise ProviderUnauthorized("Xero refused the access token", status=401)
        if response.status_code not in (200, 204, 404):
            raise ProviderUnavailable(f"Xero answered {response.status_code}",
                                      status=response.status_code)

    async def _plain_get(self, url: str, access_token: str) -> httpx.Response:
        try:
            response = await self._http.get(url, headers={"Authorization": f"Bearer {access_token}",
                                                          "Accept": "application/json"})
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"Xero unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise ProviderUnauthorized("Xero refused the access token", status=401)
        if response.status_code != 200:
            raise ProviderUnavailable(f"Xero answered {response.status_code}",
                                      status=response.status_code)
        return response

    # -- accounting API -----------------------------------------------------------------------------

    async def get(self, tenant_id: str, access_token: str, path: str,
                  params: dict[str, str] | None = None) -> dict[str, Any]:
        async for attempt in stamina.retry_context(
            on=_transient_read, attempts=3, timeout=None, wait_initial=0.2, wait_max=2.0,
        ):
            with attempt:
                return await self.call(tenant_id, access_token, "GET", path, params=params)
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def call(self, tenant_id: str, access_token: str, method: str, path: str, *,
                   params: dict[str, str] | None = None, body: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {access_token}", "xero-tenant-id": tenant_id,
                   "Accept": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        content = None
        if body is not None:
            # msgspec: the same compact JSON as httpx's json=, at a fraction of the CPU.
            content = _encode(body)
            headers["Content-Type"] = "application/json"
        async with self.pacer.call(tenant_id):
            try:
                response = await self._http.request(
                    method, f"{self._api_base}{API_PATH}{path}", params=params,
                    content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise ProviderUnavailable(f"Xero unreachable: {type(exc).__name__}",
                                          outcome_unknown=False) from None
            except httpx.TransportError as exc:
                # Sent, and no answer: Xero may have executed it (commit then drop).
                raise ProviderUnavailable(f"no answer from Xero: {type(exc).__name__}",
                                          outcome_unknown=method != "GET") from None
        return self._outcome(tenant_id, response)

    def _outcome(self, tenant_id: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status < 300:
            return _json(response)
        if status == 401:
            raise ProviderUnauthorized("Xero refused the access token", status=401)
        if status == 429:
            retry_after = _retry_after_s(response)
            self.pacer.pause(tenant_id, retry_after)
            problem = response.headers.get("X-Rate-Limit-Problem", "unknown")
            log.warning("xero.rate_limited", tenant_id=tenant_id, problem=problem,
                        retry_after_s=retry_after)
            raise ProviderRateLimited(f"Xero rate limit ({problem})", retry_after_s=retry_after)
        if status >= 500:
            raise ProviderUnavailable(f"Xero answered {status}", status=status,
                                      outcome_unknown=True)
        raise ProviderRejected(describe_error(response), status=status)


def _transient_read(exc: Exception) -> bool:
    return isinstance(exc, ProviderUnavailable)


def _retry_after_s(response: httpx.Response) -> float:
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return _RETRY_AFTER_DEFAULT_S
    return min(max(value, 0.0), _RETRY_AFTER_MAX_S)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _json_list(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return []
    return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []


def describe_error(response: httpx.Response) -> str:
    """Xero's message, with every ValidationErrors message of every element."""
    body = _json(response)
    messages = [str(v.get("Message", "")) for element in body.get("Elements") or []
                if isinstance(element, dict)
                for v in element.get("ValidationErrors") or [] if isinstance(v, dict)]
    head = str(body.get("Message") or body.get("Detail") or body.get("Title") or "")
    text = f"Xero answered {response.status_code}: {head}"
    if messages:
        text += ": " + "; ".join(dict.fromkeys(messages))
    return scrub(text)[:_ERROR_CHARS_MAX]


__all__ = ["ProviderError", "Tenant", "TokenSet", "XeroClient", "describe_error"]
