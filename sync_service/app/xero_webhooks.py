"""Xero webhooks: signature verified on the raw body, events turned into read-back jobs.

Xero signs with base64(HMAC-SHA256(webhook key, raw body)) and wants 200 with an empty body
for a valid signature and 401 for any other, within 5 seconds; the intent-to-receive
handshake is a series of such requests with no events. So the route only verifies and
queues: an INVOICE event of a connected organisation becomes a `fetch_invoice` job, which a
worker reads back from Xero (there is no payment event category: payments show on the
invoice).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from sync_service.app.queue import add_fetch
from sync_service.domain.errors import SignatureRejected

log = structlog.get_logger(__name__)
EVENTS_MAX = 1_000


class XeroEvent(msgspec.Struct, frozen=True, kw_only=True):
    resourceId: str
    eventDateUtc: str
    eventType: str
    eventCategory: str
    tenantId: str


class XeroNotification(msgspec.Struct, frozen=True, kw_only=True):
    events: list[XeroEvent]
    firstEventSequence: int = 0
    lastEventSequence: int = 0


def valid_signature(body: bytes, signature: str | None, key: str) -> bool:
    if not signature:
        return False
    expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, signature.strip())


class XeroWebhooks:
    def __init__(self, pool: AsyncConnectionPool, key: str | None, *, on_queued: Any = None
                 ) -> None:
        self._pool = pool
        self._key = key
        self._on_queued = on_queued

    async def receive(self, body: bytes, signature: str | None) -> int:
        """Returns how many read-backs were queued; raises SignatureRejected (-> 401)."""
        if self._key is None or not valid_signature(body, signature, self._key):
            raise SignatureRejected("x-xero-signature does not match")
        try:
            notification = msgspec.json.decode(body, type=XeroNotification)
        except msgspec.DecodeError:
            log.warning("xero.webhook_unreadable")
            return 0  # signed but not understood: acknowledged, Xero would only retry it
        queued = 0
        async with self._pool.connection() as conn, conn.transaction():
            for event in notification.events[:EVENTS_MAX]:
                if event.eventCategory != "INVOICE":
                    continue
                known = await (await conn.execute(
                    "SELECT 1 FROM connections WHERE connection_id = %s AND target = 'xero'",
                    (event.tenantId,))).fetchone()
                if known is None:
                    continue
                key = f"xero-webhook:{event.tenantId}:{event.resourceId}:{event.eventDateUtc}"
                if await add_fetch(conn, event.tenantId, event.resourceId, key[:500]):
                    queued += 1
        if queued and self._on_queued is not None:
            self._on_queued()
        return queued
