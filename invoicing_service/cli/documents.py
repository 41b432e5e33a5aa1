"""invoicingctl export: the month's invoices and credit notes as CSV for the accountant."""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer
from psycopg_pool import AsyncConnectionPool

from invoicing_service.app.export import COLUMNS, export_rows
from invoicing_service.cli.app import app, err, parse_period, run_with_pool
from invoicing_service.mail.outbox import resend, send_again


@app.command("export", epilog="Examples:\n\n  invoicingctl export 2026-10 > 2026-10.csv")
def export_period(
    ctx: typer.Context,
    period: Annotated[str, typer.Argument(help="YYYY-MM: documents issued in that month",
                                          callback=parse_period)],
) -> None:
    """Write every invoice and credit note issued in the month as CSV to stdout."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(COLUMNS)

    async def work(pool: AsyncConnectionPool) -> int:
        count = 0
        async for row in export_rows(pool, period):
            writer.writerow(row)
            count += 1
        return count

    count = run_with_pool(ctx, work)
    err.print(f"{count} documents")


@app.command("resend-email", epilog="Examples:\n\n  invoicingctl resend-email INV-2026-000123\n\n"
             "  invoicingctl resend-email INV-2026-000123 --again")
def resend_email(
    ctx: typer.Context,
    number: Annotated[str, typer.Argument(help="The invoice or credit note number")],
    again: Annotated[bool, typer.Option(
        "--again", help="Send a second copy of an email that was sent (a new email)")] = False,
) -> None:
    """Re-send a document's email: one that failed is tried again now (never a second copy);
    with --again, a sent one is sent once more as a new email."""

    async def work(pool: AsyncConnectionPool) -> int:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT document_id, kind FROM issued_documents WHERE number = %s", (number,))
            row = await cursor.fetchone()
            if row is None:
                err.print(f"[red]no issued document numbered {number} (yet)[/red]")
                return 2
            prefix = "invoice-issued" if row[1] == "invoice" else "credit-note-issued"
            key = f"{prefix}:{row[0]}"
            cursor = await conn.execute(
                "SELECT status FROM email_outbox WHERE idempotency_key = %s", (key,))
            status = await cursor.fetchone()
            if status is None:
                err.print(f"{number} was not emailed: its account has no billing email")
                return 1
            if status[0] == "failed":
                await resend(conn, key)
                err.print(f"{number}: the failed email is due again now")
                return 0
            if not again:
                err.print(f"{number}: its email is {status[0]}; pass --again to send a copy")
                return 1
            copy = await send_again(conn, key)
            if copy is None:
                err.print(f"{number}: the attachment was cleared; download the PDF instead")
                return 1
            err.print(f"{number}: a copy is queued ({copy})")
            return 0

    raise typer.Exit(run_with_pool(ctx, work))
