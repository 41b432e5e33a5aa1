"""Stripe's HTTP API, the one call this service makes: create a Checkout Session.

Every request carries an `Idempotency-Key` (our checkout id), so a retry after a timeout or a
5xx returns the session the first attempt created instead of a second one (Stripe keeps keys
for at least 24 hours). Retries are bounded, back off exponentially with jitter, honour
`Retry-After` on 429, and stop when Stripe says `Stripe-Should-Retry: false` (a stored result
would only be replayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import stamina
import structlog

from payments_service.domain.checkout import CheckoutRecord
from payments_service.domain.errors import ProviderRejected, ProviderUnavailable

log = structlog.get_logger(__name__)

CHECKOUT_SESSIONS_PATH: Final = "/v1/checkout/sessions"
# The Stripe API version every request names (`Stripe-Version`), so an upgrade of the account's
# default version in Stripe's dashboard cannot change the shapes we send and parse. 2024-10-28
# (acacia) is the version /work/shared/reference/external-apis.md describes: from it, Stripe
# sends refund.* events for every refund, which the refund webhooks rely on. Set the webhook
# endpoint's API version to the same value, since event payloads follow the endpoint's version.
STRIPE_API_VERSION: Final = "2024-10-28.acacia"
# Stripe's response to a checkout session is a few kilobytes; anything far larger is not it.
_RESPONSE_BYTES_MAX: Final = 1024 * 1024


class _RetryableResponse(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"Stripe answered {response.status_code}")
        self.response = response


@dataclass(frozen=True, slots=True)
class CreatedSession:
    session_id: str
    url: str
    amount_total: int
    currency: str
    expires_at: int | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class SessionLinks:
    success_url: str
    cancel_url: str


def checkout_session_params(record: CheckoutRecord, links: SessionLinks) -> list[tuple[str, str]]:
    """The form parameters of a session for `record`: derived from the record alone, so that
    a retry sends exactly the same request (Stripe refuses a reused key with other params)."""
    currency = record.currency.lower()
    params: list[tuple[str, str]] = [
        ("mode", "payment"),
        ("client_reference_id", record.checkout_id),
        ("success_url", links.success_url),
        ("cancel_url", links.cancel_url),
    ]
    lines = [(record.description, record.net_minor)]
    if record.vat_minor:
        # VAT on a line of its own: the customer sees what is credit and what is tax.
        lines.append(("VAT", record.vat_minor))
    for index, (name, unit_amount) in enumerate(lines):
        prefix = f"line_items[{index}]"
        params += [
            (f"{prefix}[quantity]", "1"),
            (f"{prefix}[price_data][currency]", currency),
            (f"{prefix}[price_data][unit_amount]", str(unit_amount)),
            (f"{prefix}[price_data][product_data][name]", name),
        ]
    metadata = {"checkout_id": record.checkout_id, "account_id": str(record.account_id),
                "purpose": record.purpose}
    if record.invoice_id is not None:
        metadata["invoice_id"] = record.invoice_id
    for key, value in metadata.items():
        params.append((f"metadata[{key}]", value))
        # Also on the PaymentIntent, so that payment_intent.payment_failed names its checkout.
        params.append((f"payment_intent_data[metadata][{key}]", value))
    return params


class StripeClient:
    def __init__(
        self,
        *,
        base_url: str,
        secret_key: str,
        timeout_s: float,
        attempts_max: int,
        wait_initial_s: float,
        wait_max_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {secret_key}",
                     "Stripe-Version": STRIPE_API_VERSION},
            transport=transport,
        )
        self._attempts_max = attempts_max
        self._wait_initial_s = wait_initial_s
        self._wait_max_s = wait_max_s

    async def aclose(self) -> None:
        await self._http.aclose()

    async def create_checkout_session(
        self, params: list[tuple[str, str]], *, idempotency_key: str
    ) -> CreatedSession:
        body = urlencode(params)
        headers = {"Idempotency-Key": idempotency_key,
                   "Content-Type": "application/x-www-form-urlencoded"}
        try:
            response = await self._post_with_retries(CHECKOUT_SESSIONS_PATH, body, headers)
        except _RetryableResponse as exc:
            raise ProviderUnavailable(
                f"Stripe answered {exc.response.status_code} after {self._attempts_max} attempts"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"Stripe unreachable after {self._attempts_max} attempts: {type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            raise ProviderRejected(_describe_error(response))
        return _created_session(response)

    async def _post_with_retries(
        self, path: str, body: str, headers: dict[str, str]
    ) -> httpx.Response:
        async for attempt in stamina.retry_context(
            on=self._backoff_for,
            attempts=self._attempts_max,
            timeout=None,
            wait_initial=self._wait_initial_s,
            wait_max=self._wait_max_s,
            wait_jitter=self._wait_initial_s,
        ):
            with attempt:
                if attempt.num > 1:
                    log.info("stripe.retry", path=path, attempt=attempt.num)
                response = await self._http.post(path, content=body, headers=headers)
                if _retryable(response):
                    raise _RetryableResponse(response)
                return response
        raise AssertionError("unreachable: stamina re-raises the last error")

    def _backoff_for(self, exc: Exception) -> bool | float:
        if isinstance(exc, httpx.TransportError):
            return True
        if not isinstance(exc, _RetryableResponse):
            return False
        response = exc.response
        if response.headers.get("Stripe-Should-Retry", "").lower() == "false":
            return False
        retry_after = response.headers.get("Retry-After", "")
        if response.status_code == 429 and retry_after.isdigit():
            return min(float(retry_after), self._wait_max_s)
        return True


def _retryable(response: httpx.Response) -> bool:
    # 409: the same key is still being executed (idempotency_key_in_use); 429: rate limited.
    return response.status_code in (409, 429) or response.status_code >= 500


def _describe_error(response: httpx.Response) -> str:
    # Type and code only: Stripe's messages can echo request values back.
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    kind = error.get("type", "unknown_error") if isinstance(error, dict) else "unknown_error"
    code = error.get("code") if isinstance(error, dict) else None
    return f"Stripe refused the checkout session ({response.status_code} {kind}" + (
        f", {code})" if code else ")"
    )


def _created_session(response: httpx.Response) -> CreatedSession:
    if len(response.content) > _RESPONSE_BYTES_MAX:
        raise ProviderRejected("Stripe answered with an oversized body")
    try:
        body: Any = response.json()
        return CreatedSession(
            session_id=str(body["id"]),
            url=str(body["url"]),
            amount_total=int(body["amount_total"]),
            currency=str(body["currency"]),
            expires_at=int(body["expires_at"]) if body.get("expires_at") else None,
            replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderRejected(f"Stripe answered with an unexpected body: {exc!r}") from None
