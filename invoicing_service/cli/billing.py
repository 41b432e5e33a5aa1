"""invoicingctl billing-run: run (or finish) a month's billing here, with a progress bar."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from psycopg_pool import AsyncConnectionPool
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from invoicing_service.app.billing import BillingRuns
from invoicing_service.app.customers import Customers
from invoicing_service.app.invoices import Invoices
from invoicing_service.app.store import open_event_store
from invoicing_service.cli.app import (
    SCHEMA,
    Failure,
    app,
    err,
    out,
    parse_period,
    run_with_pool,
    tools,
)
from invoicing_service.domain import errors


@app.command("billing-run", epilog="Examples:\n\n  invoicingctl billing-run 2026-10\n\n"
             "Idempotent per period: a run the service already started (or one that crashed) "
             "is continued, and no account is invoiced twice.")
def billing_run(
    ctx: typer.Context,
    period: Annotated[str, typer.Argument(help="The finished month to bill, YYYY-MM",
                                          callback=parse_period)],
) -> None:
    """Issue the month's invoices for every postpay account with usage to bill."""
    database_url = tools(ctx).database_url

    async def work(pool: AsyncConnectionPool) -> int:
        invoices = Invoices(await asyncio.to_thread(open_event_store, database_url, SCHEMA))
        try:
            runs = BillingRuns(pool, Customers(pool), invoices)
            try:
                run_id, created = await runs.create(period)
            except errors.PeriodNotBillable as exc:
                raise Failure(str(exc)) from None
            total = await runs.accounts_to_bill(period)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task(f"billing {period}", total=total)

                async def advance(accounts: int) -> None:
                    bar.advance(task, accounts)

                issued = await runs.execute(run_id, on_progress=advance)
            view = await runs.view(run_id)
        finally:
            invoices.close()
        state = "created" if created else "continued"
        out.print(f"{run_id} ({state}): {view.status}, {issued} invoices issued now,"
                  f" {view.invoices_issued} in the run")
        return issued

    run_with_pool(ctx, work)
