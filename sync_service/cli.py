"""syncctl: the operator's view of synchronisation: status, dead letters and their re-drive,
re-syncing an invoice, and the mappings (product codes, tax types, account -> organisation).

It works on the sync schema directly (like ledgerctl on the ledger's), so it needs only
PostgreSQL: DATABASE_URL (or SYNC_DATABASE_URL), or the embedded server of `make run`. A
re-driven change is picked up by the running service within its poll interval.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from services import cli
from services.database import create_pool
from sync_service.app.mappings import MappingBook
from sync_service.app.queue import SyncQueue
from sync_service.app.status import SyncStatusReader
from sync_service.domain.errors import SyncError

app = typer.Typer(help="Operator tools for the sync service (Xero).", no_args_is_help=True)
out = Console()
err = cli.err
PROGRAM = "syncctl"
T = TypeVar("T")


def _database_url(ctx: typer.Context) -> str:
    url = ctx.obj
    if not url:
        cli.refuse(PROGRAM, "no database: set DATABASE_URL or start `make run`")
    return str(url)


def _run(ctx: typer.Context, body: Callable[[Any], Awaitable[T]]) -> T:
    return cli.run_with_pool(
        PROGRAM, lambda: create_pool(_database_url(ctx), "sync", max_size=2, name=PROGRAM),
        body, (SyncError,), lambda exc: f"{type(exc).__name__}: {exc}")


def _queue(pool: Any) -> SyncQueue:
    return SyncQueue(pool, lease_s=60, attempts_max=8, wait_initial_s=1, wait_max_s=60)


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="PostgreSQL URL; default: DATABASE_URL, or make run's embedded"
        " server", show_default=False)] = None,
) -> None:
    ctx.obj = cli.tool_database_url(PROGRAM, "sync_service", database_url)


@app.command()
def status(ctx: typer.Context) -> None:
    """Per target and organisation: connected, last success, backlog, failures, dead letters."""
    result = _run(ctx, lambda pool: SyncStatusReader(pool, xero_configured=True).status())
    table = Table("target", "organisation", "state", "connected", "last success", "backlog",
                  "failures", "dead", "last error")
    for target in result.targets:
        rows = target.connections or []
        if not rows:
            table.add_row(target.target, "-", "-", str(target.connected), "-",
                          str(target.backlog), str(target.failures), str(target.dead_letters),
                          target.last_error or "")
        for c in rows:
            table.add_row(target.target, f"{c.name} ({c.connection_id})", c.state,
                          str(c.connected), str(c.last_success_at or "-"), str(c.backlog),
                          str(c.failures), str(c.dead_letters), (c.last_error or "")[:80])
    out.print(table)


@app.command("dead-letters")
def dead_letters(ctx: typer.Context, limit: int = 100) -> None:
    """List the changes given up on."""
    letters = _run(ctx, lambda pool: SyncStatusReader(pool, xero_configured=True)
                   .dead_letters(limit))
    table = Table("id", "organisation", "kind", "ours", "failures", "error")
    for d in letters:
        table.add_row(str(d.dead_letter_id), d.connection_id or "-", d.kind, d.subject_id,
                      str(d.failures), (d.last_error or "")[:120])
    out.print(table)
    out.print(f"{len(letters)} dead letter(s)")


@app.command()
def retry(ctx: typer.Context, dead_letter_id: int) -> None:
    """Re-drive one dead letter (looked up in Xero first if an attempt may have landed)."""
    if not _run(ctx, lambda pool: _queue(pool).redrive(dead_letter_id)):
        err.print(f"[red]syncctl:[/red] no dead letter {dead_letter_id}")
        raise typer.Exit(1)
    out.print(f"dead letter {dead_letter_id} queued again")


@app.command("retry-all")
def retry_all(ctx: typer.Context) -> None:
    """Re-drive every dead letter."""
    async def body(pool: Any) -> int:
        letters = await SyncStatusReader(pool, xero_configured=True).dead_letters(500)
        queue = _queue(pool)
        return sum([await queue.redrive(d.dead_letter_id) for d in letters])

    out.print(f"{_run(ctx, body)} dead letter(s) queued again")


@app.command()
def resync(ctx: typer.Context, invoice_id: str) -> None:
    """Push an invoice again; its external reference still prevents a second copy."""
    count = _run(ctx, lambda pool: _queue(pool).resync_invoice(invoice_id))
    if not count:
        err.print(f"[red]syncctl:[/red] no synced or dead invoice {invoice_id}")
        raise typer.Exit(1)
    out.print(f"invoice {invoice_id} queued again")


@app.command("map-product")
def map_product(
    ctx: typer.Context,
    product: Annotated[str, typer.Argument(help="Product key, or * for the fallback")],
    item_code: Annotated[str | None, typer.Option()] = None,
    account_code: Annotated[str | None, typer.Option()] = None,
    tax_type: Annotated[str | None, typer.Option()] = None,
    connection: Annotated[str, typer.Option(help="Xero tenant id, or * for all")] = "*",
) -> None:
    """Map a product to a Xero item code, account code and (optionally) tax type."""
    _run(ctx, lambda pool: MappingBook(pool).set_product(
        product=product, connection_id=connection, item_code=item_code,
        account_code=account_code, tax_type=tax_type))
    out.print(f"product {product} mapped")


@app.command("map-tax")
def map_tax(
    ctx: typer.Context, vat_treatment: str, tax_type: str,
    rate: Annotated[str, typer.Option(help="VAT rate, or * for any")] = "*",
    connection: Annotated[str, typer.Option(help="Xero tenant id, or * for all")] = "*",
) -> None:
    """Map a VAT treatment (standard, zero_rated, reverse_charge, exempt, outside_scope)."""
    _run(ctx, lambda pool: MappingBook(pool).set_tax_type(
        vat_treatment=vat_treatment, tax_type=tax_type, vat_rate=rate, connection_id=connection))
    out.print(f"{vat_treatment} -> {tax_type}")


@app.command()
def assign(ctx: typer.Context, account_id: UUID, connection_id: str) -> None:
    """Send an account's documents to one Xero organisation."""
    _run(ctx, lambda pool: MappingBook(pool).assign_account(account_id, connection_id))
    out.print(f"account {account_id} -> {connection_id}")


@app.command("link-company")
def link_company(ctx: typer.Context, account_id: UUID, company_id: str) -> None:
    """Link an account to its HubSpot company (by HubSpot's company id)."""
    _run(ctx, lambda pool: MappingBook(pool).link_company(account_id, company_id))
    out.print(f"account {account_id} -> HubSpot company {company_id}")
