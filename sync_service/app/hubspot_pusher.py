"""Pushing issued invoices to HubSpot's invoices object, and their paid / void status.

An invoice goes as: the account's company (found by our account id before one is created),
a draft invoice associated with it and carrying our invoice id, its line items associated
with it, then status `open`. HubSpot has no idempotency keys: every object carries our id
(`billing_invoice_id`, `billing_account_id`, and per line `billing_line_index`), the
references table is read before each step, and a step whose earlier attempt may have landed
is looked up by those ids (search) before anything is created again. Paid and void follow
once the invoice is open there.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Final

import msgspec
import structlog
from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import InvoiceIssued
from contracts.money import format_micros, to_micros
from sync_service.app.hubspot_api import HubSpotClient
from sync_service.app.pusher import Waiting
from sync_service.app.queue import Job, SyncQueue, read_customer
from sync_service.domain.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)

log = structlog.get_logger(__name__)

CONNECTION_ID: Final = "hubspot"
INVOICE_TO_COMPANY: Final = 179
INVOICE_PROPERTY: Final = "billing_invoice_id"
ACCOUNT_PROPERTY: Final = "billing_account_id"
LINE_PROPERTY: Final = "billing_line_index"
# HubSpot's search finds an object only some seconds after its creation: a retry whose
# create may have landed waits this long before it searches.
SEARCH_INDEXING_S: Final = 15.0


class HubSpotPusher:
    def __init__(self, pool: AsyncConnectionPool, hubspot: HubSpotClient, queue: SyncQueue
                 ) -> None:
        self._pool = pool
        self._hubspot = hubspot
        self._queue = queue
        self._unknown = False
        # One find-or-create of an account's company at a time (several of its invoices are
        # pushed at once): two searches before either create made two companies. The lease
        # keeps every push to HubSpot in this process; a lock lives while someone holds it.
        self._company_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    async def push(self, job: Job) -> None:
        state = _Attempt(unknown=job.outcome_unknown)
        try:
            if job.kind == "hubspot_invoice":
                synced = await self._push_invoice(job, state)
            elif job.kind == "hubspot_status":
                await self._push_status(job)
                synced = None
            elif job.kind == "hubspot_company":
                await self._push_company(job, state)
                synced = None
            else:
                raise ProviderRejected(f"unknown job kind {job.kind}")
        except Waiting as exc:
            await self._queue.wait(job, unknown=state.unknown, reason=str(exc))
        except ProviderRateLimited as exc:
            await self._queue.wait(job, seconds=exc.retry_after_s, unknown=state.unknown)
        except ProviderRejected as exc:
            await self._queue.bury(job, str(exc), unknown=state.unknown)
        except ProviderError as exc:
            dead = await self._queue.fail(job, f"{type(exc).__name__}: {exc}",
                                          unknown=state.unknown,
                                          delay_min_s=SEARCH_INDEXING_S if state.unknown else 0)
            log.warning("sync.hubspot_failed", job_id=job.job_id, dead=dead, error=str(exc))
        else:
            await self._queue.done(job, invoice_synced=synced)

    # -- references -----------------------------------------------------------------------------

    async def _ref(self, kind: str, our_id: str) -> str | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT external_id FROM external_refs WHERE connection_id = %s AND kind = %s"
                " AND our_id = %s", (CONNECTION_ID, kind, our_id))).fetchone()
        return None if row is None else str(row[0])

    async def _remember(self, kind: str, our_id: str, external_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO external_refs (connection_id, kind, our_id, external_id)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (CONNECTION_ID, kind, our_id, external_id))

    async def _create(self, state: _Attempt, path: str, body: dict[str, Any]) -> dict[str, Any]:
        state.unknown = True
        try:
            answer = await self._hubspot.request("POST", path, body=body)
        except ProviderUnavailable as exc:
            state.unknown = exc.outcome_unknown
            raise
        except ProviderError:
            state.unknown = False
            raise
        state.unknown = False
        return answer

    # -- steps ----------------------------------------------------------------------------------

    async def _company(self, state: _Attempt, account_id: str) -> str:
        return (await self._company_found_or_made(state, account_id))[0]

    async def _company_found_or_made(self, state: _Attempt, account_id: str
                                     ) -> tuple[str, bool]:
        found = await self._ref("company", account_id)
        if found is not None:
            return found, False
        lock = self._company_locks.setdefault(account_id, asyncio.Lock())
        async with lock:
            found = await self._ref("company", account_id)  # made while this one waited
            if found is not None:
                return found, False
            existing = await self._hubspot.search("companies", ACCOUNT_PROPERTY, account_id)
            made = not existing
            if existing:
                company_id = str(existing[0]["id"])
            else:
                created = await self._create(state, "/crm/v3/objects/companies", {
                    "properties": {
                        **company_properties(account_id, await self._customer(account_id)),
                        ACCOUNT_PROPERTY: account_id}})
                company_id = str(created["id"])
            await self._remember("company", account_id, company_id)
        return company_id, made

    async def _customer(self, account_id: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            return await read_customer(conn, account_id)

    async def _push_company(self, job: Job, state: _Attempt) -> None:
        """The billing profile changed: the company gets the newest name and address."""
        account_id = job.subject_id
        company_id, made = await self._company_found_or_made(state, account_id)
        customer = await self._customer(account_id)
        if made or customer is None:
            return
        await self._hubspot.request("PATCH", f"/crm/v3/objects/companies/{company_id}",
                                    body={"properties": company_properties(account_id,
                                                                           customer)})

    async def _push_invoice(self, job: Job, state: _Attempt) -> str:
        invoice = msgspec.convert(job.payload, InvoiceIssued)
        hubspot_id = await self._ref("invoice", invoice.invoice_id)
        if hubspot_id is None:
            company_id = await self._company(state, str(invoice.account_id))
            if state.unknown:
                found = await self._hubspot.search("invoices", INVOICE_PROPERTY,
                                                   invoice.invoice_id)
                hubspot_id = str(found[0]["id"]) if found else None
                state.unknown = False
            if hubspot_id is None:
                created = await self._create(state, "/crm/v3/objects/invoices", {
                    "properties": {
                        "hs_currency": invoice.currency, INVOICE_PROPERTY: invoice.invoice_id,
                        "billing_invoice_number": invoice.number,
                        "hs_invoice_date": invoice.issued_at.date().isoformat(),
                        "hs_due_date": invoice.due_at.date().isoformat(),
                    },
                    "associations": [{"to": {"id": company_id}, "types": [{
                        "associationCategory": "HUBSPOT_DEFINED",
                        "associationTypeId": INVOICE_TO_COMPANY}]}],
                })
                hubspot_id = str(created["id"])
            await self._remember("invoice", invoice.invoice_id, hubspot_id)
        if await self._ref("line_items", invoice.invoice_id) is None:
            await self._push_lines(invoice, hubspot_id, state)
        if await self._ref("status", invoice.invoice_id) is None:
            await self._hubspot.request("PATCH", f"/crm/v3/objects/invoices/{hubspot_id}",
                                        body={"properties": {"hs_invoice_status": "open"}})
            await self._remember("status", invoice.invoice_id, "open")
        return invoice.invoice_id

    async def _push_lines(self, invoice: InvoiceIssued, hubspot_id: str, state: _Attempt) -> None:
        # Always looked up first: a batch create whose answer was lost cannot be told apart
        # from one never sent, and line items are cheap to find by our invoice id.
        existing: dict[str, str] = {}
        for item in await self._hubspot.search("line_items", INVOICE_PROPERTY,
                                               invoice.invoice_id):
            index = str((item.get("properties") or {}).get(LINE_PROPERTY, ""))
            existing.setdefault(index, str(item["id"]))
        inputs = [{"properties": {
            "name": line.description, "quantity": str(line.quantity),
            "price": format_micros(to_micros(line.unit_price)),
            "billing_product": line.product or "", INVOICE_PROPERTY: invoice.invoice_id,
            LINE_PROPERTY: str(index)}}
            for index, line in enumerate(invoice.lines) if str(index) not in existing]
        if inputs:
            created = await self._create(state, "/crm/v3/objects/line_items/batch/create",
                                         {"inputs": inputs})
            for item in created.get("results") or []:
                existing[str(item["properties"][LINE_PROPERTY])] = str(item["id"])
        for line_id in existing.values():  # a default association is idempotent
            await self._hubspot.request(
                "PUT", f"/crm/v4/objects/invoices/{hubspot_id}/associations/default/"
                f"line_items/{line_id}")
        await self._remember("line_items", invoice.invoice_id, str(len(existing)))

    async def _push_status(self, job: Job) -> None:
        invoice_id = str(job.payload["invoice_id"])
        hubspot_id = await self._ref("invoice", invoice_id)
        if hubspot_id is None or await self._ref("status", invoice_id) is None:
            raise Waiting(f"invoice {invoice_id} is not open in HubSpot yet")
        await self._hubspot.request("PATCH", f"/crm/v3/objects/invoices/{hubspot_id}",
                                    body={"properties": {
                                        "hs_invoice_status": job.payload["status"]}})


def company_properties(account_id: str, customer: dict[str, Any] | None) -> dict[str, str]:
    """A company's name and address from the customer's billing profile (HubSpot's standard
    company properties `name`, `address`, `address2`, `country`)."""
    if customer is None:
        return {"name": f"Billing account {account_id}"}
    lines = list(customer.get("address_lines") or [])
    properties = {"name": str(customer["legal_name"])}
    if lines:
        properties["address"] = lines[0]
    if len(lines) > 1:
        properties["address2"] = ", ".join(lines[1:])
    if customer.get("country"):
        properties["country"] = str(customer["country"])
    return properties


class _Attempt:
    __slots__ = ("unknown",)

    def __init__(self, *, unknown: bool) -> None:
        self.unknown = unknown

