"""Every call the payments service makes to Stripe names the pinned API version
(`Stripe-Version`), retries included, checked against the fake Stripe server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payments_service.app.stripe_api import STRIPE_API_VERSION, StripeClient
from tests.fakes.stripe import SECRET_KEY, FakeStripe

PARAMS = [("mode", "payment"), ("line_items[0][price_data][currency]", "gbp"),
          ("line_items[0][price_data][unit_amount]", "1200"),
          ("line_items[0][price_data][product_data][name]", "Top-up"),
          ("line_items[0][quantity]", "1"), ("success_url", "https://portal.test/ok")]


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


def client(fake: FakeStripe) -> StripeClient:
    return StripeClient(base_url=fake.url, secret_key=SECRET_KEY, timeout_s=5, attempts_max=3,
                        wait_initial_s=0, wait_max_s=0)


def test_the_pinned_version_is_a_dated_stripe_version() -> None:
    date, _, name = STRIPE_API_VERSION.partition(".")
    assert len(date) == 10 and date[4] == date[7] == "-" and name == "acacia"


async def test_a_checkout_session_request_and_its_retries_name_the_pinned_version(
    stripe: FakeStripe,
) -> None:
    stripe.fail_next(times=1, status=503)
    api = client(stripe)
    try:
        session = await api.create_checkout_session(PARAMS, idempotency_key="chk-version")
    finally:
        await api.aclose()
    assert session.session_id in stripe.sessions
    assert [status for _, status, _ in stripe.requests] == [503, 200]
    assert stripe.versions == [STRIPE_API_VERSION, STRIPE_API_VERSION]
