"""The outbox's crash window, hit on purpose (the cheap fault of `make faults` that runs in the
default suite): payments_service with FAULT_INJECT=outbox.before_publish exits right after a
top-up's webhook committed and before its message was published. Started again without the
setting, it publishes the message, and the ledger credits the top-up exactly once although
Stripe delivers the webhook again."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.database import conninfo
from services.fault_points import FAULT_EXIT_CODE
from tests.conftest import Infra
from tests.e2e.test_topup_end_to_end import (
    OPERATOR,
    WEBHOOK_SECRET,
    deliver,
    ledger_balance,
    wait_for_balance,
)
from tests.fakes.stripe import SECRET_KEY, FakeStripe, event
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def services(infra: Infra, tmp_path: Path) -> Iterator[
        tuple[ServiceProcess, dict[str, str], FakeStripe, Path]]:
    with FakeStripe() as stripe:
        ledger = ServiceProcess("ledger_service", infra.service_env()).start(tmp_path)
        env = infra.service_env(STRIPE_API_BASE=stripe.url, STRIPE_SECRET_KEY=SECRET_KEY,
                                STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET,
                                OUTBOX_POLL_INTERVAL_S="0.2")
        try:
            ledger.wait_ready()
            yield ledger, env, stripe, tmp_path
        finally:
            assert ledger.stop() == 0, ledger.logs()


def unsent_payments(infra: Infra, account: str) -> int:
    """payments.v1.received messages for `account` committed and not yet published."""
    with psycopg.connect(conninfo(infra.database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL"
                           " AND subject = 'payments.v1.received'"
                           " AND position(%s in convert_from(payload, 'UTF8')) > 0",
                           (account,)).fetchone()
    return int(row[0]) if row else 0


def test_a_payment_committed_by_a_process_that_died_before_publishing_is_credited_once(
        infra: Infra, services: tuple[ServiceProcess, dict[str, str], FakeStripe, Path]) -> None:
    ledger, env, stripe, logs = services
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text

    doomed = ServiceProcess("payments_service", {**env, "FAULT_INJECT": "outbox.before_publish"})
    doomed.start(logs).wait_ready()
    checkout = httpx.post(f"{doomed.url}/v1/checkout/topups", headers=OPERATOR, timeout=30,
                          json={"account_id": account, "amount": "100.00"})
    assert checkout.status_code == 201, checkout.text
    completed = event("checkout.session.completed", stripe.paid_session(
        checkout.json()["session_id"], f"pi_{uuid.uuid4().hex[:24]}"))
    # The relay, woken by the commit, may exit before the webhook's answer is sent: Stripe
    # then sees no answer and delivers again, as below.
    with contextlib.suppress(httpx.TransportError):
        assert deliver(doomed, completed).status_code == 200
    assert doomed.process is not None
    assert doomed.process.wait(30) == FAULT_EXIT_CODE, doomed.logs()
    assert unsent_payments(infra, account) == 1  # committed, never published
    assert ledger_balance(ledger, account) == "0.00"

    payments = ServiceProcess("payments_service", env, port=doomed.port).start(logs)
    try:
        payments.wait_ready()
        assert deliver(payments, completed).status_code == 200  # Stripe retried meanwhile
        wait_for_balance(ledger, account, "100.00")
        assert unsent_payments(infra, account) == 0
    finally:
        assert payments.stop() == 0, payments.logs()
    assert ledger_balance(ledger, account) == "100.00"
