"""The sync queue: what is to be pushed to which connection, as rows in PostgreSQL.

Messages are turned into jobs in the transaction that the subscriber commits before it acks,
keyed by the document (`source_key`), so a redelivered or repeated message adds nothing. A
connection's lane claims a few jobs at a time with a lease (`FOR UPDATE SKIP LOCKED`, so
processes share the queue), each with the external references its push reads first; a worker
that dies leaves a lease that expires, and the job comes back marked `outcome_unknown` (its
create may have reached Xero), so the next attempt looks it up first.

The hot path is one statement per round trip, run in autocommit (`single_statements`): a
statement is atomic by itself, and psycopg would otherwise send a BEGIN and a COMMIT of its
own around it, two more round trips each (measured: most of the sync process's CPU per call
was spent on some seventeen round trips per invoice).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from contracts.invoicing import (
    CreditNoteIssued,
    CustomerUpdated,
    InvoiceIssued,
    InvoicePaid,
    InvoiceVoided,
)
from contracts.money import to_micros
from contracts.payments import PaymentReceived

Conn = psycopg.AsyncConnection[Any]
ERROR_CHARS_MAX: Final = 500
# A change waiting for another (a payment for its invoice) looks again at most this late;
# the other's success wakes it at once anyway.
DEPENDENCY_WAIT_MAX_S: Final = 30.0

_KINDS_AFTER_INVOICE: Final = ("payment", "void", "credit_note", "hubspot_status")


@dataclass(frozen=True, slots=True)
class Job:
    job_id: int
    connection_id: str
    account_id: UUID | None
    kind: str
    subject_id: str
    payload: dict[str, Any]
    attempts: int
    failures: int
    outcome_unknown: bool
    # Read with the claim: the external reference of this document (kind = the job's kind),
    # and of the account's contact. A reference is written once and never changes, and no
    # one else holds the job, so the claim's reading is as good as one just before the push.
    ref: str | None = None
    contact_ref: str | None = None


@contextlib.asynccontextmanager
async def single_statements(pool: AsyncConnectionPool) -> AsyncIterator[Conn]:
    """A pooled connection in autocommit: for statements each atomic by itself, without
    the BEGIN and COMMIT round trips psycopg would add around each (the connection goes back
    to the pool as it came)."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            if conn.info.transaction_status == TransactionStatus.IDLE:
                await conn.set_autocommit(False)


async def _connection_for(conn: Conn, account_id: UUID, invoice_id: str | None) -> str | None:
    """The invoice's connection if it has one, else the account's, else the default."""
    if invoice_id is not None:
        row = await (await conn.execute(
            "SELECT connection_id FROM sync_jobs WHERE kind = 'invoice' AND subject_id = %s",
            (invoice_id,))).fetchone()
        if row is not None and row[0] is not None:
            return str(row[0])
    row = await (await conn.execute(
        "SELECT connection_id FROM account_connections WHERE account_id = %s",
        (account_id,))).fetchone()
    if row is not None:
        return str(row[0])
    row = await (await conn.execute(
        "SELECT connection_id FROM connections WHERE is_default AND target = 'xero'")).fetchone()
    return None if row is None else str(row[0])


async def _add(conn: Conn, *, kind: str, account_id: UUID, subject_id: str, source_key: str,
               payload: dict[str, Any], invoice_id: str | None) -> bool:
    connection_id = await _connection_for(conn, account_id, invoice_id)
    cursor = await conn.execute(
        "INSERT INTO sync_jobs (connection_id, account_id, kind, subject_id, source_key, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (source_key) DO NOTHING",
        (connection_id, account_id, kind, subject_id, source_key, Jsonb(payload)))
    return cursor.rowcount == 1


def _builtins(message: msgspec.Struct) -> dict[str, Any]:
    data = msgspec.to_builtins(message)
    assert isinstance(data, dict)
    return data


# Invoices, each with its HubSpot job (while HubSpot is active) and its Xero job (on the
# account's connection, else the default one; as `_connection_for`), in one statement (so
# atomic even in autocommit), from arrays, each payload encoded once for all three; the
# subjects of the jobs it added come back. The intake's group commit writes a batch at once.
_ADD_INVOICES: Final = (
    "WITH input AS (SELECT * FROM unnest(%(ids)s::text[], %(numbers)s::text[],"
    " %(accounts)s::uuid[], %(currencies)s::text[], %(subtotals)s::int8[],"
    " %(vat_totals)s::int8[], %(totals)s::int8[], %(payloads)s::jsonb[]) WITH ORDINALITY"
    " AS t(invoice_id, number, account_id, currency, subtotal, vat_total, total, payload, n)),"
    " invoice AS (INSERT INTO invoices (invoice_id, number, account_id, currency,"
    " subtotal_micros, vat_total_micros, total_micros, issued) SELECT invoice_id, number,"
    " account_id, currency, subtotal, vat_total, total, payload FROM input ORDER BY n"
    " ON CONFLICT (invoice_id) DO NOTHING),"
    " hubspot AS (INSERT INTO sync_jobs (connection_id, kind, subject_id, source_key, payload)"
    " SELECT 'hubspot', 'hubspot_invoice', invoice_id, 'hubspot-invoice:' || invoice_id,"
    " payload FROM input WHERE EXISTS (SELECT 1 FROM connections WHERE connection_id ="
    " 'hubspot' AND status = 'active') ORDER BY n ON CONFLICT (source_key) DO NOTHING"
    " RETURNING subject_id),"
    " xero AS (INSERT INTO sync_jobs (connection_id, account_id, kind, subject_id, source_key,"
    " payload) SELECT coalesce(a.connection_id, (SELECT connection_id FROM connections"
    " WHERE is_default AND target = 'xero')), i.account_id, 'invoice', i.invoice_id,"
    " 'invoice:' || i.invoice_id, i.payload FROM input i LEFT JOIN account_connections a"
    " ON a.account_id = i.account_id ORDER BY i.n ON CONFLICT (source_key) DO NOTHING"
    " RETURNING subject_id)"
    " SELECT subject_id FROM hubspot UNION ALL SELECT subject_id FROM xero")


async def add_invoice(conn: Conn, invoice: InvoiceIssued) -> bool:
    """Whether the invoice added a job (a redelivered one adds nothing)."""
    return (await add_invoices(conn, [invoice]))[0]


async def add_invoices(conn: Conn, invoices: Sequence[InvoiceIssued]) -> list[bool]:
    """`add_invoice` for each of `invoices` in one statement (atomic: all or none)."""
    if not invoices:
        return []
    rows = await (await conn.execute(_ADD_INVOICES, {
        "ids": [i.invoice_id for i in invoices], "numbers": [i.number for i in invoices],
        "accounts": [i.account_id for i in invoices],
        "currencies": [i.currency for i in invoices],
        "subtotals": [to_micros(i.subtotal) for i in invoices],
        "vat_totals": [to_micros(i.vat_total) for i in invoices],
        "totals": [to_micros(i.total) for i in invoices],
        "payloads": [msgspec.json.encode(i).decode() for i in invoices]})).fetchall()
    added = {str(r[0]) for r in rows}
    return [i.invoice_id in added for i in invoices]


async def _add_hubspot(conn: Conn, *, kind: str, subject_id: str, source_key: str,
                       payload: dict[str, Any]) -> bool:
    """A HubSpot job, when HubSpot is connected (its connection row is active)."""
    cursor = await conn.execute(
        "INSERT INTO sync_jobs (connection_id, kind, subject_id, source_key, payload)"
        " SELECT 'hubspot', %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM connections"
        " WHERE connection_id = 'hubspot' AND status = 'active')"
        " ON CONFLICT (source_key) DO NOTHING",
        (kind, subject_id, source_key, Jsonb(payload)))
    return cursor.rowcount == 1


async def add_paid(conn: Conn, paid: InvoicePaid) -> bool:
    return await _add_hubspot(conn, kind="hubspot_status", subject_id=paid.invoice_id,
                              source_key=f"hubspot-paid:{paid.invoice_id}",
                              payload={"invoice_id": paid.invoice_id, "status": "paid"})


async def add_credit_note(conn: Conn, note: CreditNoteIssued) -> bool:
    return await _add(conn, kind="credit_note", account_id=note.account_id,
                      subject_id=note.credit_note_id,
                      source_key=f"credit_note:{note.credit_note_id}",
                      payload=_builtins(note), invoice_id=note.invoice_id)


async def add_void(conn: Conn, voided: InvoiceVoided) -> bool:
    to_hubspot = await _add_hubspot(conn, kind="hubspot_status", subject_id=voided.invoice_id,
                                    source_key=f"hubspot-void:{voided.invoice_id}",
                                    payload={"invoice_id": voided.invoice_id,
                                             "status": "voided"})
    return to_hubspot | await _add(conn, kind="void", account_id=voided.account_id,
                      subject_id=voided.invoice_id, source_key=f"void:{voided.invoice_id}",
                      payload=_builtins(voided), invoice_id=voided.invoice_id)


async def add_payment(conn: Conn, payment: PaymentReceived) -> bool:
    return await _add(conn, kind="payment", account_id=payment.account_id,
                      subject_id=payment.payment_id, source_key=f"payment:{payment.payment_id}",
                      payload=_builtins(payment), invoice_id=payment.invoice_id)


async def add_customer(conn: Conn, customer: CustomerUpdated) -> bool:
    """Keep the newest version of the customer's details, and queue the contact (Xero) and
    company (HubSpot) updates. An older or repeated version changes nothing."""
    cursor = await conn.execute(
        "INSERT INTO customers (account_id, version, legal_name, address_lines, country,"
        " billing_email, vat_number, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (account_id) DO UPDATE SET version = EXCLUDED.version,"
        " legal_name = EXCLUDED.legal_name, address_lines = EXCLUDED.address_lines,"
        " country = EXCLUDED.country, billing_email = EXCLUDED.billing_email,"
        " vat_number = EXCLUDED.vat_number, updated_at = EXCLUDED.updated_at"
        " WHERE customers.version < EXCLUDED.version",
        (customer.account_id, customer.version, customer.legal_name,
         list(customer.address_lines), customer.country, customer.billing_email,
         customer.vat_number, customer.updated_at))
    if cursor.rowcount == 0:
        return False
    # The job carries no details: it pushes whatever is newest when it runs.
    key = f"{customer.account_id}:{customer.version}"
    payload = {"account_id": str(customer.account_id), "version": customer.version}
    to_hubspot = await _add_hubspot(conn, kind="hubspot_company",
                                    subject_id=str(customer.account_id),
                                    source_key=f"hubspot-company:{key}", payload=payload)
    to_xero = await _add(conn, kind="contact", account_id=customer.account_id,
                         subject_id=str(customer.account_id), source_key=f"contact:{key}",
                         payload=payload, invoice_id=None)
    return to_xero or to_hubspot


async def read_customer(conn: Conn, account_id: str) -> dict[str, Any] | None:
    """The newest details of a customer, or None when no billing profile was announced."""
    row = await (await conn.execute(
        "SELECT legal_name, address_lines, country, billing_email, vat_number FROM customers"
        " WHERE account_id = %s", (account_id,))).fetchone()
    if row is None:
        return None
    return {"legal_name": row[0], "address_lines": list(row[1]), "country": row[2],
            "billing_email": row[3], "vat_number": row[4]}


async def add_fetch(conn: Conn, connection_id: str, xero_invoice_id: str, event_key: str) -> bool:
    cursor = await conn.execute(
        "INSERT INTO sync_jobs (connection_id, kind, subject_id, source_key, payload)"
        " VALUES (%s, 'fetch_invoice', %s, %s, %s) ON CONFLICT (source_key) DO NOTHING",
        (connection_id, xero_invoice_id, event_key,
         Jsonb({"xero_invoice_id": xero_invoice_id})))
    return cursor.rowcount == 1


class SyncQueue:
    def __init__(self, pool: AsyncConnectionPool, *, lease_s: float, attempts_max: int,
                 wait_initial_s: float, wait_max_s: float) -> None:
        self._pool = pool
        self._lease = timedelta(seconds=lease_s)
        self.lease_s = lease_s
        self.attempts_max = attempts_max
        self._wait_initial_s = wait_initial_s
        self._wait_max_s = wait_max_s

    async def due_connections(self) -> list[str]:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT c.connection_id FROM connections c WHERE c.status = 'active'"
                " AND EXISTS (SELECT 1 FROM sync_jobs j WHERE j.connection_id = c.connection_id"
                " AND ((j.status = 'pending' AND j.next_attempt_at <= now())"
                " OR (j.status = 'running' AND j.lease_until < now())))"
                " ORDER BY c.connection_id")).fetchall()
        return [str(r[0]) for r in rows]

    async def claim(self, connection_id: str, limit: int = 1) -> list[Job]:
        """Up to `limit` due jobs of one connection, oldest first, leased to this process,
        each with the references its push reads first."""
        async with single_statements(self._pool) as conn:
            rows = await (await conn.execute(
                "WITH picked AS (SELECT job_id FROM sync_jobs WHERE connection_id = %s AND"
                " ((status = 'pending' AND next_attempt_at <= now())"
                " OR (status = 'running' AND lease_until < now()))"
                " ORDER BY job_id LIMIT %s FOR UPDATE SKIP LOCKED),"
                " claimed AS (UPDATE sync_jobs j SET status = 'running',"
                " attempts = j.attempts + 1, lease_until = now() + %s, updated_at = now(),"
                # A lease that ran out: its worker may have created the document, then died.
                " outcome_unknown = j.outcome_unknown OR j.status = 'running'"
                " FROM picked WHERE j.job_id = picked.job_id"
                " RETURNING j.job_id, j.connection_id, j.account_id, j.kind, j.subject_id,"
                " j.payload, j.attempts, j.failures, j.outcome_unknown)"
                " SELECT c.*, r.external_id, contact.external_id FROM claimed c"
                " LEFT JOIN external_refs r ON r.connection_id = c.connection_id"
                " AND r.kind = c.kind AND r.our_id = c.subject_id"
                " LEFT JOIN external_refs contact ON contact.connection_id = c.connection_id"
                " AND contact.kind = 'contact' AND contact.our_id = c.account_id::text"
                " ORDER BY c.job_id",
                (connection_id, limit, self._lease))).fetchall()
        return [Job(job_id=row[0], connection_id=row[1], account_id=row[2], kind=row[3],
                    subject_id=row[4], payload=row[5], attempts=row[6], failures=row[7],
                    outcome_unknown=row[8], ref=row[9], contact_ref=row[10]) for row in rows]

    async def release(self, jobs: list[Job]) -> None:
        """Claimed jobs this process will not push after all (a 429 pause, a stop): back to
        the queue as they were, neither attempted nor outcome unknown."""
        if not jobs:
            return
        async with single_statements(self._pool) as conn:
            await conn.execute(
                "UPDATE sync_jobs SET status = 'pending', lease_until = NULL,"
                " attempts = greatest(attempts - 1, 0), updated_at = now()"
                " WHERE job_id = ANY(%s) AND status = 'running'",
                ([job.job_id for job in jobs],))

    async def done(self, job: Job, *, invoice_synced: str | None = None,
                   made: tuple[str, str, str] | None = None) -> None:
        """The job succeeded: `made` (kind, our id, external id) is the reference of what it
        created, written with the completion (one statement, so atomic: a crash before it
        leaves the lease to expire, and the retry looks the document up by our number)."""
        kind, our_id, external_id = made if made is not None else (None, None, None)
        async with single_statements(self._pool) as conn:
            await conn.execute(
                "WITH ref AS (INSERT INTO external_refs (connection_id, kind, our_id,"
                " external_id) SELECT %(connection)s, %(kind)s::text, %(our_id)s::text,"
                " %(external_id)s::text WHERE %(kind)s::text IS NOT NULL ON CONFLICT DO NOTHING),"
                " finished AS (UPDATE sync_jobs SET status = 'done', lease_until = NULL,"
                " last_error = NULL, outcome_unknown = false, updated_at = now()"
                " WHERE job_id = %(job_id)s),"
                " success AS (UPDATE connections SET last_success_at = now()"
                " WHERE connection_id = %(connection)s)"
                # What waited for this invoice may go now.
                " UPDATE sync_jobs SET next_attempt_at = now() WHERE %(invoice)s::text IS NOT NULL"
                " AND status = 'pending' AND connection_id = %(connection)s"
                " AND kind = ANY(%(kinds)s) AND coalesce(payload->>'invoice_id', subject_id)"
                " = %(invoice)s::text",
                {"connection": job.connection_id, "kind": kind, "our_id": our_id,
                 "external_id": external_id, "job_id": job.job_id, "invoice": invoice_synced,
                 "kinds": list(_KINDS_AFTER_INVOICE)})

    async def wait(self, job: Job, *, seconds: float | None = None, unknown: bool,
                   reason: str | None = None) -> None:
        """Not a failure: waiting for another change, a rate limit or a reconnection."""
        delay_s = seconds if seconds is not None else min(
            DEPENDENCY_WAIT_MAX_S, 0.5 * 2 ** min(job.attempts, 8))
        await self._set(job, "pending", delay_s=delay_s, unknown=unknown, error=reason,
                        failed=False)

    async def fail(self, job: Job, error: str, *, unknown: bool, delay_min_s: float = 0.0
                   ) -> bool:
        """A transient failure: retried with back-off and jitter, or dead once too many.
        Returns True when it became a dead letter."""
        failures = job.failures + 1
        if failures >= self.attempts_max:
            await self._set(job, "dead", delay_s=0.0, unknown=unknown, error=error, failed=True)
            return True
        await self._set(job, "pending", delay_s=max(delay_min_s, self.backoff_s(failures)),
                        unknown=unknown, error=error, failed=True)
        return False

    async def bury(self, job: Job, error: str, *, unknown: bool) -> None:
        """A failure retrying cannot fix (a validation error): a dead letter at once."""
        await self._set(job, "dead", delay_s=0.0, unknown=unknown, error=error, failed=True)

    def backoff_s(self, failures: int) -> float:
        ceiling = min(self._wait_max_s, self._wait_initial_s * 2 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter)

    async def _set(self, job: Job, status: str, *, delay_s: float, unknown: bool,
                   error: str | None, failed: bool) -> None:
        error = error[:ERROR_CHARS_MAX] if error else None
        async with single_statements(self._pool) as conn:
            await conn.execute(
                "WITH job AS (UPDATE sync_jobs SET status = %(status)s, lease_until = NULL,"
                " outcome_unknown = %(unknown)s,"
                " next_attempt_at = now() + make_interval(secs => %(delay_s)s),"
                " failures = failures + %(failed)s,"
                " last_error = coalesce(%(error)s::text, last_error), updated_at = now()"
                " WHERE job_id = %(job_id)s)"
                " UPDATE connections SET last_error = %(error)s::text"
                " WHERE connection_id = %(connection)s AND %(failed)s = 1"
                " AND %(error)s::text IS NOT NULL",
                {"status": status, "unknown": unknown, "delay_s": delay_s,
                 "failed": 1 if failed else 0, "error": error, "job_id": job.job_id,
                 "connection": job.connection_id})

    async def redrive(self, job_id: int) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE sync_jobs SET status = 'pending', failures = 0, next_attempt_at = now(),"
                " updated_at = now() WHERE job_id = %s AND status = 'dead'", (job_id,))
            return cursor.rowcount == 1

    async def resync_invoice(self, invoice_id: str) -> int:
        """Push an invoice again (done or dead): the external reference still prevents a
        second copy; returns how many jobs were re-queued."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE sync_jobs SET status = 'pending', failures = 0, next_attempt_at = now(),"
                " updated_at = now() WHERE subject_id = %s AND kind = 'invoice'"
                " AND status IN ('done', 'dead')", (invoice_id,))
            return cursor.rowcount
