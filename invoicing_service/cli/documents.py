"""invoicingctl export: the month's invoices and credit notes as CSV for the accountant."""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer
from psycopg_pool import AsyncConnectionPool

from invoicing_service.app.export import COLUMNS, export_rows
from invoicing_service.cli.app import app, err, parse_period, run_with_pool


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
