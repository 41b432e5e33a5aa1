"""Alerts through the mailer's outbox: once per source event, per the account's settings, a
minimum interval between low-balance emails, and a history the portal reads."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import NotificationSettings
from contracts.invoicing import RecurringPastDue
from contracts.ledger import BalanceLow
from contracts.subjects import INVOICING_RECURRING_PAST_DUE, LEDGER_BALANCE_LOW
from invoicing_service.alerts.app import Alerts, recipients_for
from invoicing_service.alerts.messaging import alert_for
from invoicing_service.mail import InvalidEmail
from tests.conftest import Infra
from tests.integration.recurring_fixtures import ManualClock, fetch, fresh_pool

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[AsyncConnectionPool]:
    built = await fresh_pool(infra, "alerts_test")
    try:
        yield built
    finally:
        await built.close()


def low(account: uuid.UUID, n: int) -> bytes:
    return msgspec.json.encode(BalanceLow(
        event_id=f"balance_low:{account}:{n}", account_id=account, currency="GBP",
        balance="1.50", available="1.50", threshold="5.00", occurred_at=T0))


async def configured(alerts: Alerts, account: uuid.UUID, **changes: object) -> None:
    body = {"billing_email": "ops@acme.example", "extra_recipients": ["cfo@acme.example"],
            **changes}
    await alerts.save_settings(account, msgspec.convert(body, NotificationSettings))


async def test_a_balance_low_event_is_emailed_once_to_every_recipient(
        pool: AsyncConnectionPool) -> None:
    clock = ManualClock(T0)
    alerts, account = Alerts(pool, min_interval=timedelta(hours=1), clock=clock), uuid.uuid4()
    await configured(alerts, account)
    alert = alert_for(LEDGER_BALANCE_LOW, low(account, 1))
    assert alert is not None
    assert await alerts.send(alert) == 2
    assert await alerts.send(alert) == 0, "a redelivered event is not emailed again"
    rows = await fetch(pool, "SELECT kind, recipients, subject FROM email_outbox")
    assert rows == [("balance_low", ["ops@acme.example", "cfo@acme.example"],
                     "Your balance is low: GBP 1.50 available")]
    page = await alerts.history(account)
    assert sorted((a.kind, a.recipient, a.channel) for a in page.items) == [
        ("balance_low", "cfo@acme.example", "email"), ("balance_low", "ops@acme.example", "email")]


async def test_low_balance_emails_keep_a_minimum_interval(pool: AsyncConnectionPool) -> None:
    clock = ManualClock(T0)
    alerts, account = Alerts(pool, min_interval=timedelta(hours=1), clock=clock), uuid.uuid4()
    await configured(alerts, account, extra_recipients=[])
    for n, minutes in ((1, 0), (2, 10), (3, 61)):
        clock.now = T0 + timedelta(minutes=minutes)
        alert = alert_for(LEDGER_BALANCE_LOW, low(account, n))
        assert alert is not None
        await alerts.send(alert)
    assert await fetch(pool, "SELECT count(*) FROM email_outbox") == [(2,)]


async def test_an_alert_kind_switched_off_or_without_recipients_sends_nothing(
        pool: AsyncConnectionPool) -> None:
    alerts, account = Alerts(pool, min_interval=timedelta(0)), uuid.uuid4()
    nobody = alert_for(LEDGER_BALANCE_LOW, low(account, 1))
    assert nobody is not None and await alerts.send(nobody) == 0  # no address known yet
    await configured(alerts, account, balance_low=False)
    off = alert_for(LEDGER_BALANCE_LOW, low(account, 2))
    assert off is not None and await alerts.send(off) == 0
    due = alert_for(INVOICING_RECURRING_PAST_DUE, msgspec.json.encode(RecurringPastDue(
        event_id="recurring.past_due:i1:2026-12", item_id="i1", account_id=account,
        product="vmn", reference="+447700900123", period="2026-12",
        suspend_after=T0 + timedelta(days=7), occurred_at=T0)))
    assert due is not None and await alerts.send(due) == 2
    (subject,) = await fetch(pool, "SELECT subject FROM email_outbox")
    assert subject == ("Renewal of +447700900123 could not be charged",)


async def test_settings_refuse_an_address_the_mailer_would_refuse(
        pool: AsyncConnectionPool) -> None:
    alerts, account = Alerts(pool, min_interval=timedelta(0)), uuid.uuid4()
    with pytest.raises(InvalidEmail):
        await configured(alerts, account, billing_email="a(b)@acme.example")
    view = await alerts.settings(account)
    assert view.stored is False and view.balance_low is True
    await configured(alerts, account, extra_recipients=["x@acme.example", "x@acme.example"])
    async with pool.connection() as conn:
        assert await recipients_for(conn, account) == ("ops@acme.example", "x@acme.example")
