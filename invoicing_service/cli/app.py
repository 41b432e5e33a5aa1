"""The typer app and what every command shares: settings, the database, errors."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console

from services import cli
from services.database import create_pool

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Operator tools of the invoicing service.")
out = Console()
err = cli.err
T = TypeVar("T")
SCHEMA = "invoicing"
PROGRAM = "invoicingctl"
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
    return cli.run_with_pool(PROGRAM, tools(ctx).pool, work, (Failure,))


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="PostgreSQL URL; default: DATABASE_URL, or make run's embedded"
        " server", show_default=False)] = None,
) -> None:
    """Operator tools of the invoicing service."""
    url = cli.tool_database_url(PROGRAM, "invoicing_service", database_url)
    if url is None:
        cli.refuse(PROGRAM, "no DATABASE_URL and no running `make run` database")
    ctx.obj = Tools(url)
