"""The sync queue's hot path: a lane claims several changes in one statement, each with the
references its push reads first; changes claimed and not started go back untouched; a
completion writes the created reference and wakes what waited for the invoice, at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import sync_service
from contracts.invoicing import InvoiceIssued, InvoiceLine, VatBreakdown
from contracts.payments import PaymentReceived
from services.database import apply_migrations, create_pool
from sync_service.app import queue
from sync_service.app.queue import SyncQueue
from sync_service.messaging import InvoiceIntake
from tests.conftest import Infra

pytestmark = pytest.mark.integration

ISSUED = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[Any]:
    migrations = Path(sync_service.__file__).parent / "migrations"
    await asyncio.to_thread(apply_migrations, infra.database_url, "sync", migrations)
    pool = create_pool(infra.database_url, "sync", max_size=4, name="sync-queue-test")
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture
async def organisation(pool: Any) -> tuple[str, uuid.UUID]:
    """A connection of its own and an account assigned to it."""
    connection_id, account_id = f"org-{uuid.uuid4()}", uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO connections (connection_id, name) VALUES (%s, 'Org')",
                           (connection_id,))
        await conn.execute("INSERT INTO account_connections VALUES (%s, %s)",
                           (account_id, connection_id))
    return connection_id, account_id


def _queue(pool: Any, lease_s: float = 120.0) -> SyncQueue:
    return SyncQueue(pool, lease_s=lease_s, attempts_max=8, wait_initial_s=1, wait_max_s=300)


def _invoice(account_id: uuid.UUID, n: int) -> InvoiceIssued:
    line = InvoiceLine(description="SMS", product="sms", quantity=1, unit_price="10.00",
                       net_amount="10.00", vat_rate="20", vat_treatment="standard",
                       vat_amount="2.00")
    return InvoiceIssued(
        event_id=f"evt-{uuid.uuid4()}", invoice_id=f"inv-{uuid.uuid4()}", number=f"INV-{n}",
        account_id=account_id, currency="GBP", period="2026-10", lines=[line],
        vat_breakdown=[VatBreakdown(vat_rate="20", vat_treatment="standard",
                                    net_amount="10.00", vat_amount="2.00")],
        subtotal="10.00", vat_total="2.00", total="12.00", issued_at=ISSUED,
        due_at=ISSUED + timedelta(days=30))


async def _add(pool: Any, invoices: list[InvoiceIssued]) -> None:
    for invoice in invoices:
        async with pool.connection() as conn, conn.transaction():
            assert await queue.add_invoice(conn, invoice)
            assert not await queue.add_invoice(conn, invoice)  # a redelivery adds nothing


async def test_a_batch_claim_takes_the_oldest_with_their_references_and_never_twice(
        pool: Any, organisation: tuple[str, uuid.UUID]) -> None:
    connection_id, account_id = organisation
    invoices = [_invoice(account_id, n) for n in range(5)]
    await _add(pool, invoices)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO external_refs (connection_id, kind, our_id, external_id) VALUES"
            " (%s, 'contact', %s, 'xero-contact'), (%s, 'invoice', %s, 'xero-inv-0')",
            (connection_id, str(account_id), connection_id, invoices[0].invoice_id))
    first, second = _queue(pool), _queue(pool)  # two processes
    claimed = await first.claim(connection_id, 3)
    rest = await second.claim(connection_id, 3)
    assert [j.subject_id for j in claimed] == [i.invoice_id for i in invoices[:3]]
    assert [j.subject_id for j in rest] == [i.invoice_id for i in invoices[3:]]
    assert [j.ref for j in claimed] == ["xero-inv-0", None, None]
    assert {j.contact_ref for j in claimed + rest} == {"xero-contact"}
    assert all(j.attempts == 1 and not j.outcome_unknown for j in claimed)
    assert claimed[0].payload["number"] == invoices[0].number
    assert await first.claim(connection_id, 3) == []


async def test_released_changes_come_back_as_they_were_and_expired_ones_as_unknown(
        pool: Any, organisation: tuple[str, uuid.UUID]) -> None:
    connection_id, account_id = organisation
    await _add(pool, [_invoice(account_id, n) for n in range(2)])
    held = _queue(pool)
    jobs = await held.claim(connection_id, 2)
    await held.release(jobs[:1])
    again = await _queue(pool).claim(connection_id, 2)
    assert [(j.job_id, j.attempts, j.outcome_unknown) for j in again] == [
        (jobs[0].job_id, 1, False)]  # released: not an attempt, nothing may have reached Xero
    short = _queue(pool, lease_s=0.05)
    async with pool.connection() as conn:  # the second one's worker "died" holding it
        await conn.execute("UPDATE sync_jobs SET lease_until = now() - interval '1 second'"
                           " WHERE job_id = %s", (jobs[1].job_id,))
    [expired] = await short.claim(connection_id, 2)
    assert (expired.job_id, expired.attempts, expired.outcome_unknown) == (
        jobs[1].job_id, 2, True)


async def test_done_writes_the_reference_and_wakes_the_invoices_payment(
        pool: Any, organisation: tuple[str, uuid.UUID]) -> None:
    connection_id, account_id = organisation
    invoice = _invoice(account_id, 1)
    await _add(pool, [invoice])
    payment = PaymentReceived(
        payment_id=f"pay-{uuid.uuid4()}", provider="stripe", provider_reference="pi_1",
        account_id=account_id, purpose="invoice", amount="10.00", vat_amount="2.00",
        currency="GBP", invoice_id=invoice.invoice_id, received_at=ISSUED)
    async with pool.connection() as conn, conn.transaction():
        assert await queue.add_payment(conn, payment)
        await conn.execute("UPDATE sync_jobs SET next_attempt_at = now() + interval '1 hour'"
                           " WHERE subject_id = %s", (payment.payment_id,))  # waiting
    sync = _queue(pool)
    [job] = await sync.claim(connection_id, 5)
    await sync.done(job, invoice_synced=invoice.invoice_id,
                    made=("invoice", invoice.invoice_id, "xero-inv-1"))
    [woken] = await sync.claim(connection_id, 5)
    assert (woken.kind, woken.subject_id) == ("payment", payment.payment_id)
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT j.status, r.external_id, c.last_success_at IS NOT NULL FROM sync_jobs j"
            " JOIN external_refs r ON r.our_id = j.subject_id AND r.kind = 'invoice'"
            " JOIN connections c ON c.connection_id = j.connection_id WHERE j.job_id = %s",
            (job.job_id,))).fetchone()
    assert row == ("done", "xero-inv-1", True)


async def test_the_group_commit_writes_concurrent_invoices_in_one_statement_each_once(
        pool: Any, organisation: tuple[str, uuid.UUID], monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers of a pulled batch hand their invoices over together: one statement writes
    them (not one each), a repeat within the batch or of an earlier one adds nothing, and
    every job lands on the account's connection with the invoice's row beside it."""
    connection_id, account_id = organisation
    earlier = _invoice(account_id, 0)
    await _add(pool, [earlier])
    statements: list[int] = []
    real = queue.add_invoices

    async def counted(conn: Any, invoices: Any) -> list[bool]:
        statements.append(len(invoices))
        return await real(conn, invoices)

    monkeypatch.setattr(queue, "add_invoices", counted)
    intake = InvoiceIntake(pool)
    fresh = [_invoice(account_id, n) for n in range(1, 41)]
    added = await asyncio.gather(*(intake.add(i) for i in [*fresh, fresh[0], earlier]))
    assert added == [True] * 40 + [True, False]  # the repeat shares its twin's statement
    assert statements == [42]
    async with pool.connection() as conn:
        jobs = await (await conn.execute(
            "SELECT subject_id FROM sync_jobs WHERE connection_id = %s AND kind = 'invoice'"
            " ORDER BY job_id", (connection_id,))).fetchall()
        rows = await (await conn.execute(
            "SELECT count(*) FROM invoices WHERE account_id = %s", (account_id,))).fetchone()
    assert [r[0] for r in jobs] == [i.invoice_id for i in [earlier, *fresh]]
    assert rows[0] == 41


async def test_a_failed_group_commit_fails_every_invoice_in_it_and_writes_none(
        pool: Any, organisation: tuple[str, uuid.UUID], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each handler then raises, so its message is redelivered; the next write succeeds."""
    connection_id, account_id = organisation
    real = queue.add_invoices

    async def failing(conn: Any, invoices: Any) -> list[bool]:
        await conn.execute("SELECT 1 / 0")  # the statement fails in the database
        return await real(conn, invoices)

    monkeypatch.setattr(queue, "add_invoices", failing)
    intake = InvoiceIntake(pool)
    invoices = [_invoice(account_id, n) for n in range(5)]
    outcomes = await asyncio.gather(*(intake.add(i) for i in invoices), return_exceptions=True)
    assert all(isinstance(o, psycopg.errors.DivisionByZero) for o in outcomes)
    async with pool.connection() as conn:
        none = await (await conn.execute(
            "SELECT count(*) FROM sync_jobs WHERE connection_id = %s", (connection_id,))).fetchone()
    assert none[0] == 0
    monkeypatch.setattr(queue, "add_invoices", real)
    assert await asyncio.gather(*(intake.add(i) for i in invoices)) == [True] * 5
