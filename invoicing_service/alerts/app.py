"""Alerts as use cases: turn an event into emails through the mailer's outbox (sent over SMTP
by its relay, retried, never twice), with a history row per recipient; notification settings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import (
    ALERTS_PAGE_MAX,
    AlertsPage,
    AlertView,
    NotificationSettings,
    NotificationSettingsView,
)
from invoicing_service.alerts.domain import (
    ALERT_KINDS,
    Alert,
    Preferences,
    held_back,
    recipients,
)
from invoicing_service.mail import OutgoingEmail, enqueue_email
from invoicing_service.mail.message import check_address

log = structlog.get_logger(__name__)

Conn = psycopg.AsyncConnection[Any]


async def preferences(conn: Conn, account_id: UUID) -> Preferences | None:
    cursor = await conn.execute(
        "SELECT balance_low, renewal_past_due, renewal_suspended, invoice_overdue,"
        " billing_email, extra_recipients FROM notification_settings WHERE account_id = %s",
        (account_id,))
    row = await cursor.fetchone()
    if row is None:
        return None
    enabled = frozenset(kind for kind, on in zip(ALERT_KINDS, row[:4], strict=True) if on)
    return Preferences(enabled=enabled, billing_email=row[4], extra_recipients=tuple(row[5]))


async def recipients_for(conn: Conn, account_id: UUID) -> tuple[str, ...]:
    """Who an account's alerts go to: the billing profile's email (the address invoices go
    to), else the notification settings' own billing_email, then the settings' extra
    recipients."""
    prefs = await preferences(conn, account_id) or Preferences()
    cursor = await conn.execute(
        "SELECT billing_email FROM billing_profiles WHERE account_id = %s", (account_id,))
    row = await cursor.fetchone()
    billing_email = (row[0] if row and row[0] else None) or prefs.billing_email
    return recipients(billing_email, prefs.extra_recipients)


class Alerts:
    def __init__(self, pool: AsyncConnectionPool, *, min_interval: timedelta,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_commit: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self.min_interval = min_interval
        self.clock = clock
        self._on_commit = on_commit or (lambda: None)

    async def send(self, alert: Alert) -> int:
        """Queue the alert's email once per source event; returns recipients queued (0: off,
        nobody to send to, held back, or sent before)."""
        now = self.clock()
        async with self.pool.connection() as conn, conn.transaction():
            # One account's alerts one at a time: the interval check and the insert agree.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                               (f"alerts:{alert.account_id}",))
            prefs = await preferences(conn, alert.account_id) or Preferences()
            if alert.kind not in prefs.enabled:
                log.info("alerts.off", kind=alert.kind, account_id=str(alert.account_id))
                return 0
            to = await recipients_for(conn, alert.account_id)
            if not to:
                log.warning("alerts.no_recipient", kind=alert.kind,
                            account_id=str(alert.account_id))
                return 0
            cursor = await conn.execute(
                "SELECT max(sent_at) FROM alert_history WHERE account_id = %s AND kind = %s",
                (alert.account_id, alert.kind))
            row = await cursor.fetchone()
            if held_back(alert.kind, row[0] if row else None, now, self.min_interval):
                log.info("alerts.held_back", kind=alert.kind, account_id=str(alert.account_id))
                return 0
            queued = await enqueue_email(conn, OutgoingEmail(
                idempotency_key=alert.email_key, account_id=alert.account_id,
                kind=alert.kind, recipients=to, subject=alert.subject,
                text_body=alert.text_body))
            if not queued:
                return 0  # this event's alert exists already: never twice
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO alert_history (account_id, kind, recipient, source_event_id,"
                    " email_key, sent_at) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(alert.account_id, alert.kind, address, alert.source_event_id,
                      alert.email_key, now) for address in to])
        self._on_commit()
        return len(to)

    async def history(self, account_id: UUID, limit: int = ALERTS_PAGE_MAX) -> AlertsPage:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT kind, channel, recipient, sent_at, source_event_id FROM alert_history"
                " WHERE account_id = %s ORDER BY sent_at DESC, alert_id DESC LIMIT %s",
                (account_id, min(limit, ALERTS_PAGE_MAX)))
            rows = await cursor.fetchall()
        return AlertsPage(items=[
            AlertView(kind=row[0], channel=row[1], recipient=row[2],
                      sent_at=row[3].astimezone(UTC), source_event_id=row[4])
            for row in rows])

    async def settings(self, account_id: UUID) -> NotificationSettingsView:
        async with self.pool.connection() as conn:
            prefs = await preferences(conn, account_id)
        stored = prefs is not None
        prefs = prefs or Preferences()
        return NotificationSettingsView(
            account_id=account_id, stored=stored,
            balance_low="balance_low" in prefs.enabled,
            renewal_past_due="renewal_past_due" in prefs.enabled,
            renewal_suspended="renewal_suspended" in prefs.enabled,
            invoice_overdue="invoice_overdue" in prefs.enabled,
            billing_email=prefs.billing_email, extra_recipients=list(prefs.extra_recipients))

    async def save_settings(self, account_id: UUID,
                            body: NotificationSettings) -> NotificationSettingsView:
        """Replace the account's settings. Raises InvalidEmail for an address the mailer
        would refuse, so a bad address is refused now, not when an alert is due."""
        for address in (body.billing_email, *body.extra_recipients):
            if address is not None:
                check_address(address)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notification_settings (account_id, balance_low, renewal_past_due,"
                " renewal_suspended, invoice_overdue, billing_email, extra_recipients,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (account_id) DO UPDATE SET balance_low = EXCLUDED.balance_low,"
                " renewal_past_due = EXCLUDED.renewal_past_due,"
                " renewal_suspended = EXCLUDED.renewal_suspended,"
                " invoice_overdue = EXCLUDED.invoice_overdue,"
                " billing_email = EXCLUDED.billing_email,"
                " extra_recipients = EXCLUDED.extra_recipients, updated_at = now()",
                (account_id, body.balance_low, body.renewal_past_due, body.renewal_suspended,
                 body.invoice_overdue, body.billing_email,
                 list(dict.fromkeys(body.extra_recipients))))
        return await self.settings(account_id)
