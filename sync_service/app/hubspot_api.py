"""HubSpot's CRM API with a private app token: paced within the account's burst limit (and
search's 4 per second), outcomes classified as for Xero. HubSpot has no idempotency keys, so
the callers look objects up by our ids before creating them again after an unknown outcome.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import stamina

from services.logging import register_secret
from sync_service.app.pacing import Pacer
from sync_service.domain.errors import (
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnauthorized,
    ProviderUnavailable,
)

BUCKET: Final = "hubspot"
SEARCH_BUCKET: Final = "hubspot-search"
_ERROR_CHARS_MAX: Final = 500


class HubSpotClient:
    def __init__(self, *, base_url: str, access_token: str, pacer: Pacer, search_pacer: Pacer,
                 timeout_s: float) -> None:
        register_secret(access_token)
        self.pacer = pacer
        self.search_pacer = search_pacer
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"),
                                       timeout=httpx.Timeout(timeout_s),
                                       headers={"Authorization": f"Bearer {access_token}",
                                                "Accept": "application/json"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """A read, retried on transient failures and rate limits."""
        async for attempt in stamina.retry_context(
            on=lambda exc: isinstance(exc, ProviderUnavailable | ProviderRateLimited),
            attempts=5, timeout=None, wait_initial=0.5, wait_max=10.0,
        ):
            with attempt:
                return await self.request("GET", path, params=params)
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def search(self, object_type: str, property_name: str, value: str
                     ) -> list[dict[str, Any]]:
        body = {"filterGroups": [{"filters": [{"propertyName": property_name, "operator": "EQ",
                                               "value": value}]}], "limit": 10}
        async with self.search_pacer.call(SEARCH_BUCKET):
            answer = await self.request("POST", f"/crm/v3/objects/{object_type}/search",
                                        body=body)
        return [r for r in answer.get("results") or [] if isinstance(r, dict)]

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None) -> dict[str, Any]:
        async with self.pacer.call(BUCKET):
            try:
                response = await self._http.request(method, path, params=params, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise ProviderUnavailable(f"HubSpot unreachable: {type(exc).__name__}",
                                          outcome_unknown=False) from None
            except httpx.TransportError as exc:
                raise ProviderUnavailable(f"no answer from HubSpot: {type(exc).__name__}",
                                          outcome_unknown=method != "GET") from None
        status = response.status_code
        if status < 300:
            try:
                answer = response.json()
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
        if status == 401:
            raise ProviderUnauthorized("HubSpot refused the access token", status=401)
        if status == 429:
            # No reliable Retry-After: the 10-second window, unless HubSpot says otherwise.
            try:
                wait_s = float(response.headers.get("Retry-After", "10"))
            except ValueError:
                wait_s = 10.0
            self.pacer.pause(BUCKET, wait_s)
            raise ProviderRateLimited("HubSpot rate limit", retry_after_s=wait_s)
        if status >= 500:
            raise ProviderUnavailable(f"HubSpot answered {status}", status=status)
        try:
            message = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            message = ""
        raise ProviderRejected(f"HubSpot answered {status}: {message}"[:_ERROR_CHARS_MAX],
                               status=status)
