"""The sync queue: what is to be pushed to which connection, as rows in PostgreSQL.

Messages are turned into jobs in the transaction that the subscriber commits before it acks,
keyed by the document (`source_key`), so a redelivered or repeated message adds nothing. A
worker claims one job at a time with a lease (`FOR UPDATE SKIP LOCKED`, so processes share the
queue); a worker that dies leaves a lease that expires, and the job comes back marked
`outcome_unknown` (its create may have reached Xero), so the next attempt looks it up first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
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


async def add_invoice(conn: Conn, invoice: InvoiceIssued) -> bool:
    await conn.execute(
        "INSERT INTO invoices (invoice_id, number, account_id, currency, subtotal_micros,"
        " vat_total_micros, total_micros, issued) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (invoice_id) DO NOTHING",
        (invoice.invoice_id, invoice.number, invoice.account_id, invoice.currency,
         to_micros(invoice.subtotal), to_micros(invoice.vat_total), to_micros(invoice.total),
         Jsonb(_builtins(invoice))))
    to_hubspot = await _add_hubspot(conn, kind="hubspot_invoice", subject_id=invoice.invoice_id,
                                    source_key=f"hubspot-invoice:{invoice.invoice_id}",
                                    payload=_builtins(invoice))
    to_xero = await _add(conn, kind="invoice", account_id=invoice.account_id,
                         subject_id=invoice.invoice_id,
                         source_key=f"invoice:{invoice.invoice_id}",
                         payload=_builtins(invoice), invoice_id=None)
    return to_xero or to_hubspot


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

    async def claim(self, connection_id: str) -> Job | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "WITH picked AS (SELECT job_id FROM sync_jobs WHERE connection_id = %s AND"
                " ((status = 'pending' AND next_attempt_at <= now())"
                " OR (status = 'running' AND lease_until < now()))"
                " ORDER BY job_id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE sync_jobs j SET status = 'running', attempts = j.attempts + 1,"
                " lease_until = now() + %s, updated_at = now(),"
                # A lease that ran out: its worker may have created the document, then died.
                " outcome_unknown = j.outcome_unknown OR j.status = 'running'"
                " FROM picked WHERE j.job_id = picked.job_id"
                " RETURNING j.job_id, j.connection_id, j.account_id, j.kind, j.subject_id,"
                " j.payload, j.attempts, j.failures, j.outcome_unknown",
                (connection_id, self._lease))).fetchone()
        if row is None:
            return None
        return Job(job_id=row[0], connection_id=row[1], account_id=row[2], kind=row[3],
                   subject_id=row[4], payload=row[5], attempts=row[6], failures=row[7],
                   outcome_unknown=row[8])

    async def done(self, job: Job, *, invoice_synced: str | None = None) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE sync_jobs SET status = 'done', lease_until = NULL, last_error = NULL,"
                " outcome_unknown = false, updated_at = now() WHERE job_id = %s", (job.job_id,))
            await conn.execute(
                "UPDATE connections SET last_success_at = now() WHERE connection_id = %s",
                (job.connection_id,))
            if invoice_synced is not None:
                # What waited for this invoice may go now.
                await conn.execute(
                    "UPDATE sync_jobs SET next_attempt_at = now() WHERE status = 'pending'"
                    " AND connection_id = %s AND kind = ANY(%s)"
                    " AND coalesce(payload->>'invoice_id', subject_id) = %s",
                    (job.connection_id, list(_KINDS_AFTER_INVOICE), invoice_synced))

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
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE sync_jobs SET status = %s, lease_until = NULL, outcome_unknown = %s,"
                " next_attempt_at = now() + make_interval(secs => %s),"
                " failures = failures + %s, last_error = coalesce(%s, last_error),"
                " updated_at = now() WHERE job_id = %s",
                (status, unknown, delay_s, 1 if failed else 0,
                 error[:ERROR_CHARS_MAX] if error else None, job.job_id))
            if failed and error:
                await conn.execute(
                    "UPDATE connections SET last_error = %s WHERE connection_id = %s",
                    (error[:ERROR_CHARS_MAX], job.connection_id))

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
