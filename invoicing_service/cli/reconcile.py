"""invoicingctl reconcile: a period's invoices against the ledger's usage debits."""

from __future__ import annotations

from typing import Annotated

import typer
from psycopg_pool import AsyncConnectionPool
from rich.table import Table

from contracts.money import format_micros
from invoicing_service.app.reconcile import AccountReconciliation, reconcile
from invoicing_service.cli.app import app, out, parse_period, run_with_pool


@app.command("reconcile", epilog="Examples:\n\n  invoicingctl reconcile 2026-10\n\n"
             "Exit status 1 when any account's invoices disagree with its debits beyond the "
             "rounding rule (half a penny per line), or usage was left out of a completed run.")
def reconcile_period(
    ctx: typer.Context,
    period: Annotated[str, typer.Argument(help="YYYY-MM", callback=parse_period)],
    show_all: Annotated[bool, typer.Option("--all", help="List matching accounts too")] = False,
) -> None:
    """Per account: invoice net lines of the period == the usage debits they bill."""

    async def work(pool: AsyncConnectionPool) -> list[AccountReconciliation]:
        return [result async for result in reconcile(pool, period)]

    results = run_with_pool(ctx, work)
    mismatches = [r for r in results if not r.matches]
    table = Table("account", "currency", "debits", "billed", "invoiced net", "tolerance",
                  "unbilled", "voided", "ok", title=f"Reconciliation of {period}")
    for r in results:
        if show_all or not r.matches:
            table.add_row(r.account_id, r.currency, format_micros(r.debits_micros),
                          format_micros(r.billed_debits_micros),
                          format_micros(r.invoiced_net_micros), format_micros(r.tolerance_micros),
                          format_micros(r.unbilled_debits_micros),
                          format_micros(r.voided_debits_micros),
                          "[green]yes[/green]" if r.matches else "[red]NO[/red]")
    if table.rows:
        out.print(table)
    out.print(f"{len(results)} accounts, {len(mismatches)} mismatched")
    raise typer.Exit(1 if mismatches else 0)
