"""HubSpot webhook batches: verify, de-duplicate each notification, settle paid invoices.

A notification says only "invoice 123's status became paid". The invoice is read back from
HubSpot (its current status, currency, amount and our invoice id), then compared with our own
record of that invoice; what is credited comes from our record, never from the notification.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.money import MoneyError, to_micros
from payments_service.app import records
from payments_service.app.announce import announce_received
from payments_service.app.hubspot_api import HubSpotClient
from payments_service.app.records import Conn, NewPayment
from payments_service.domain.checkout import InvoiceBalance, quote_invoice
from payments_service.domain.errors import InvoiceNotPayable
from payments_service.domain.provider_events import (
    HubSpotNotification,
    decode_hubspot_notifications,
)
from payments_service.domain.signatures import verify_hubspot_signature_v3

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NotificationResult:
    key: str
    outcome: str


@dataclass(frozen=True, slots=True)
class _Item:
    raw: str
    notification: HubSpotNotification


class HubSpotWebhooks:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        client: HubSpotClient,
        *,
        client_secret: str,
        on_commit: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._pool = pool
        self._client = client
        self._client_secret = client_secret
        self._on_commit = on_commit
        self._clock_ms = clock_ms

    async def receive(
        self,
        *,
        method: str,
        uri: str,
        body: bytes,
        signature: str | None,
        timestamp_ms: str | None,
    ) -> list[NotificationResult]:
        verify_hubspot_signature_v3(
            method=method, uri=uri, body=body, signature=signature, timestamp_ms=timestamp_ms,
            client_secret=self._client_secret, now_ms=self._clock_ms(),
        )
        items = [_Item(raw=raw, notification=note)
                 for raw, note in decode_hubspot_notifications(body)]
        unseen = await self._unseen([item.notification.key for item in items])
        to_read = [str(item.notification.objectId) for item in items
                   if item.notification.key in unseen and item.notification.is_invoice_paid]
        # Outside the transaction: a slow HubSpot must not hold database locks.
        invoices = await self._client.read_invoices(list(dict.fromkeys(to_read)))
        results: list[NotificationResult] = []
        async with self._pool.connection() as conn, conn.transaction():
            for item in items:
                note = item.notification
                fresh = await records.insert_provider_event(
                    conn, "hubspot", note.key, note.subscriptionType or "unknown", item.raw
                )
                if not fresh:
                    results.append(NotificationResult(note.key, "duplicate"))
                    continue
                if not note.is_invoice_paid:
                    outcome = "ignored_notification"
                elif str(note.objectId) not in to_read:
                    # Unreachable while provider_events rows are never deleted (a key seen
                    # before our read is never fresh here); never settle on unread data.
                    outcome = "not_read"
                else:
                    outcome = await self._settle(conn, note, invoices.get(str(note.objectId)))
                await records.set_event_outcome(conn, "hubspot", note.key, outcome)
                results.append(NotificationResult(note.key, outcome))
        self._on_commit()
        log.info("hubspot.batch", notifications=len(items),
                 outcomes=sorted({result.outcome for result in results}))
        return results

    async def _unseen(self, keys: list[str]) -> set[str]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT event_id FROM provider_events WHERE provider = 'hubspot'"
                " AND event_id = ANY(%s)",
                (keys,),
            )
            seen = {row[0] for row in await cursor.fetchall()}
        return set(keys) - seen

    async def _settle(
        self, conn: Conn, note: HubSpotNotification, properties: dict[str, Any] | None
    ) -> str:
        object_id = str(note.objectId)

        async def refuse(kind: str, **detail: Any) -> str:
            await records.record_security_event(
                conn, provider="hubspot", event_id=note.key, kind=kind, claimed_account=None,
                detail={"hubspot_invoice": object_id, **detail},
            )
            return "security_event"

        if properties is None:
            return await refuse("hubspot_invoice_unknown")
        if str(properties.get("hs_invoice_status") or "").lower() != "paid":
            return "ignored_not_paid"  # HubSpot's current state wins over the notification
        invoice_id = properties.get(self._client.invoice_id_property)
        if not invoice_id:
            return await refuse("hubspot_invoice_unlinked")
        invoice = await _invoice_for_update(conn, str(invoice_id))
        if invoice is None:
            return await refuse("invoice_unknown", invoice_id=invoice_id)
        problems = _invoice_mismatches(invoice, properties)
        if problems:
            return await refuse("hubspot_invoice_mismatch", invoice_id=invoice_id,
                                problems=problems)
        existing = await records.payment_for_reference(conn, "hubspot", object_id)
        if existing is not None:
            return "already_received"
        if invoice["status"] != "open":
            return await refuse("invoice_not_open", invoice_id=invoice_id,
                                status=invoice["status"])
        try:
            quote = quote_invoice(
                InvoiceBalance(net_due_micros=invoice["net_due_micros"],
                               vat_due_micros=invoice["vat_due_micros"]),
                invoice["currency"],
            )
        except InvoiceNotPayable:
            return await refuse("invoice_nothing_due", invoice_id=invoice_id)
        received_at = datetime.fromtimestamp(note.occurredAt / 1000, tz=UTC) if note.occurredAt \
            else datetime.now(tz=UTC)
        payment = await records.insert_payment(conn, NewPayment(
            payment_id=records.payment_id_for("hubspot", "hubspot_invoice", object_id),
            source="hubspot_invoice",
            provider="hubspot",
            provider_reference=object_id,
            account_id=invoice["account_id"],
            purpose="invoice",
            invoice_id=str(invoice_id),
            currency=invoice["currency"],
            net_minor=quote.net_minor,
            vat_minor=quote.vat_minor,
            status="succeeded",
            provider_event_id=note.key,
            received_at=received_at,
        ))
        if payment is None:
            return "already_received"
        await records.mark_invoice_paid(conn, str(invoice_id))
        await announce_received(conn, payment, received_at)
        return "payment_received"


async def _invoice_for_update(conn: Conn, invoice_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT i.invoice_id, i.account_id, i.currency, i.status,"
            " i.subtotal_micros + i.vat_total_micros AS total_micros,"
            " i.subtotal_micros - coalesce((SELECT sum(net_micros) FROM invoice_credit_notes c"
            "   WHERE c.invoice_id = i.invoice_id), 0) AS net_due_micros,"
            " i.vat_total_micros - coalesce((SELECT sum(vat_micros) FROM invoice_credit_notes c"
            "   WHERE c.invoice_id = i.invoice_id), 0) AS vat_due_micros"
            " FROM invoices i WHERE i.invoice_id = %s FOR UPDATE",
            (invoice_id,),
        )
        row = await cursor.fetchone()
    if row is not None:
        for key in ("total_micros", "net_due_micros", "vat_due_micros"):
            row[key] = int(row[key])
    return row


def _invoice_mismatches(invoice: dict[str, Any], properties: dict[str, Any]) -> list[str]:
    problems = []
    currency = str(properties.get("hs_currency") or "").upper()
    if currency != invoice["currency"]:
        problems.append(f"currency {currency!r} != {invoice['currency']!r}")
    billed = properties.get("hs_amount_billed")
    if billed not in (None, ""):
        try:
            billed_micros = to_micros(Decimal(str(billed)))
        except (InvalidOperation, MoneyError):
            problems.append(f"hs_amount_billed {billed!r} is not an amount")
        else:
            if billed_micros != invoice["total_micros"]:
                problems.append(f"hs_amount_billed {billed} != invoice total")
    return problems
