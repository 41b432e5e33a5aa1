"""The typer app and what every command shares: settings, the database, errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console

from services.database import create_pool
from services.embedded import embedded_database_url
from services.logging import configure_logging
from services.settings import SettingsError, load_tool_settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Operator tools of the invoicing service.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")
SCHEMA = "invoicing"
PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


class Failure(Exception):
    """A refusal to show the operator (exit 2), not a crash."""


@dataclass(frozen=True, slots=True)
class Tools:
    database_url: str

    def pool(self) -> AsyncConnectionPool:
        return create_pool(self.database_url, SCHEMA, max_size=4, name="invoicingctl")


def tools(ctx: typer.Context) -> Tools:
    assert isinstance(ctx.obj, Tools)
    return ctx.obj


def parse_period(text: str) -> str:
    if not PERIOD.match(text):
        raise typer.BadParameter(f"a period is YYYY-MM, got {text!r}")
    return text


def run_with_pool(ctx: typer.Context, work: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    """Run `work` with an open pool; errors the operator can act on exit 2 with a message."""

    async def main() -> T:
        pool = tools(ctx).pool()
        await pool.open(wait=True, timeout=10)
        try:
            return await work(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(main())
    except Failure as exc:
        err.print(f"[red]invoicingctl:[/red] {exc}")
        raise typer.Exit(2) from None
    except psycopg.OperationalError as exc:
        err.print(f"[red]invoicingctl:[/red] PostgreSQL: {exc}")
        raise typer.Exit(2) from None


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="PostgreSQL URL; default: DATABASE_URL, or make run's embedded"
        " server", show_default=False)] = None,
) -> None:
    """Operator tools of the invoicing service."""
    configure_logging(service="invoicingctl", level="WARNING", fmt="console")
    try:
        settings = load_tool_settings("invoicing_service")
    except SettingsError as exc:
        err.print(f"[red]invoicingctl:[/red] {exc}")
        raise typer.Exit(2) from None
    url = database_url or settings.database_url or embedded_database_url(Path(settings.run_dir))
    if url is None:
        err.print("[red]invoicingctl:[/red] no DATABASE_URL and no running `make run` database")
        raise typer.Exit(2)
    ctx.obj = Tools(url)
