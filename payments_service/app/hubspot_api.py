"""HubSpot's CRM API, read-only: the invoices a webhook batch names.

HubSpot notifications say only that a property changed on an object id; how much was paid and
which of our invoices it is must be read back from HubSpot (one batch read of up to 100
invoices per webhook request) and then checked against our own invoice record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import httpx
import stamina

from payments_service.domain.errors import ProviderUnavailable
from payments_service.domain.provider_events import HUBSPOT_BATCH_MAX

BATCH_READ_PATH: Final = "/crm/v3/objects/invoices/batch/read"
INVOICE_PROPERTIES: Final = ("hs_invoice_status", "hs_currency", "hs_amount_billed")


class _Retryable(Exception):
    pass


class HubSpotClient:
    def __init__(
        self,
        *,
        base_url: str,
        access_token: str | None,
        invoice_id_property: str,
        timeout_s: float = 3.0,
        attempts_max: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._access_token = access_token
        self._invoice_id_property = invoice_id_property
        self._attempts_max = attempts_max
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    @property
    def invoice_id_property(self) -> str:
        return self._invoice_id_property

    async def aclose(self) -> None:
        await self._http.aclose()

    async def read_invoices(self, object_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """object id -> properties, for each invoice HubSpot knows; unknown ids are absent."""
        assert len(object_ids) <= HUBSPOT_BATCH_MAX
        if not object_ids:
            return {}
        if not self._access_token:
            raise ProviderUnavailable("HUBSPOT_ACCESS_TOKEN is not set: invoices cannot be read")
        body = {
            "properties": [*INVOICE_PROPERTIES, self._invoice_id_property],
            "inputs": [{"id": object_id} for object_id in dict.fromkeys(object_ids)],
        }
        try:
            response = await self._post(body)
        except (_Retryable, httpx.TransportError) as exc:
            raise ProviderUnavailable(f"HubSpot batch read failed: {exc}") from None
        # 207: some ids were not found; the others are still in `results`.
        if response.status_code not in (200, 207):
            raise ProviderUnavailable(f"HubSpot batch read answered {response.status_code}")
        results = response.json().get("results", [])
        return {
            str(item["id"]): dict(item.get("properties") or {})
            for item in results
            if isinstance(item, dict) and "id" in item
        }

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        # HubSpot waits 5 s for the webhook's answer: a few short attempts, then give up and
        # let HubSpot redeliver the batch.
        async for attempt in stamina.retry_context(
            on=(_Retryable, httpx.TransportError),
            attempts=self._attempts_max,
            timeout=4.0,
            wait_initial=0.1,
            wait_max=0.5,
            wait_jitter=0.1,
        ):
            with attempt:
                response = await self._http.post(
                    BATCH_READ_PATH,
                    json=body,
                    headers={"Authorization": f"Bearer {self._access_token}"},
                )
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(f"HubSpot answered {response.status_code}")
                return response
        raise AssertionError("unreachable: stamina re-raises the last error")
