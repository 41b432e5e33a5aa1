"""The Stripe API client: one Idempotency-Key across retries, bounded retries on 5xx, 409,
429 and network errors, no retry where Stripe says a retry cannot help."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from payments_service.app.stripe_api import StripeClient
from payments_service.domain.errors import ProviderRejected, ProviderUnavailable

SESSION = {"id": "cs_test_1", "url": "https://checkout.stripe.com/c/pay/cs_test_1",
           "amount_total": 12_000, "currency": "gbp", "expires_at": 1_900_000_000}
PARAMS = [("mode", "payment"), ("line_items[0][quantity]", "1")]


class Script:
    """Answers requests in order and records what was sent."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Callable[[httpx.Request], httpx.Response], attempts: int = 4) -> StripeClient:
    return StripeClient(base_url="https://stripe.test", secret_key="sk_test_x", timeout_s=1,
                        attempts_max=attempts, wait_initial_s=0, wait_max_s=0,
                        transport=httpx.MockTransport(script))


def ok() -> httpx.Response:
    return httpx.Response(200, json=SESSION)


async def test_5xx_then_success_reuses_one_idempotency_key_and_the_same_body() -> None:
    script = Script(httpx.Response(502), httpx.Response(503, json={}), ok())
    session = await client(script).create_checkout_session(PARAMS, idempotency_key="chk-1")
    assert session.session_id == "cs_test_1"
    assert [r.headers["Idempotency-Key"] for r in script.requests] == ["chk-1"] * 3
    assert len({r.content for r in script.requests}) == 1
    assert script.requests[0].headers["Authorization"] == "Bearer sk_test_x"
    assert script.requests[0].content == b"mode=payment&line_items%5B0%5D%5Bquantity%5D=1"


async def test_network_errors_and_timeouts_are_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok())
    session = await client(script).create_checkout_session(PARAMS, idempotency_key="chk-1")
    assert (session.session_id, len(script.requests)) == ("cs_test_1", 3)


async def test_rate_limit_and_key_in_use_are_retried() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "0"}),
                    httpx.Response(409, json={"error": {"code": "idempotency_key_in_use"}}),
                    ok())
    await client(script).create_checkout_session(PARAMS, idempotency_key="chk-1")
    assert len(script.requests) == 3


async def test_retries_are_bounded_and_end_as_provider_unavailable() -> None:
    script = Script(*(httpx.Response(500) for _ in range(3)))
    with pytest.raises(ProviderUnavailable):
        await client(script, attempts=3).create_checkout_session(PARAMS, idempotency_key="k")
    assert len(script.requests) == 3


async def test_a_stored_500_stripe_says_not_to_retry_is_not_retried() -> None:
    script = Script(httpx.Response(500, headers={"Stripe-Should-Retry": "false"}), ok())
    with pytest.raises(ProviderUnavailable):
        await client(script).create_checkout_session(PARAMS, idempotency_key="k")
    assert len(script.requests) == 1


async def test_a_refusal_is_not_retried_and_its_message_is_not_echoed() -> None:
    error = {"error": {"type": "idempotency_error", "message": "secret param echo sk_live_x"}}
    script = Script(httpx.Response(400, json=error))
    with pytest.raises(ProviderRejected) as info:
        await client(script).create_checkout_session(PARAMS, idempotency_key="k")
    assert "idempotency_error" in str(info.value)
    assert "sk_live_x" not in str(info.value)
    assert len(script.requests) == 1


async def test_a_replayed_answer_is_reported_as_such() -> None:
    script = Script(httpx.Response(200, json=SESSION, headers={"Idempotent-Replayed": "true"}))
    session = await client(script).create_checkout_session(PARAMS, idempotency_key="k")
    assert session.replayed and session.amount_total == 12_000
