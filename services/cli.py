"""What the database-backed operator tools (invoicingctl, syncctl) share: finding the
database, running a command's work on a pool, and refusing with a message and exit 2."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console

from services.embedded import embedded_database_url
from services.logging import configure_logging
from services.settings import SettingsError, load_tool_settings

POOL_OPEN_TIMEOUT_S = 10
err = Console(stderr=True)
T = TypeVar("T")


def refuse(program: str, message: str) -> NoReturn:
    """A refusal the operator can act on (exit 2), not a crash."""
    err.print(f"[red]{program}:[/red] {message}")
    raise typer.Exit(2)


def tool_database_url(program: str, package: str, database_url: str | None) -> str | None:
    """Set up a tool's logging (warnings and errors only, on stderr: the output is the
    operator's) and find its database: --database-url, then the package's DATABASE_URL
    settings, then `make run`'s embedded server."""
    configure_logging(service=program, level="WARNING", fmt="console")
    try:
        settings = load_tool_settings(package)
    except SettingsError as exc:
        refuse(program, str(exc))
    return database_url or settings.database_url or embedded_database_url(Path(settings.run_dir))


def run_with_pool(program: str, pool: Callable[[], AsyncConnectionPool],
                  work: Callable[[AsyncConnectionPool], Awaitable[T]],
                  failures: tuple[type[Exception], ...] = (),
                  describe: Callable[[Exception], str] = str) -> T:
    """Run `work` on a freshly opened pool; `failures` (the tool's refusals) and PostgreSQL's
    errors exit 2 with their message."""

    async def main() -> T:
        opened = pool()
        await opened.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        try:
            return await work(opened)
        finally:
            await opened.close()

    try:
        return asyncio.run(main())
    except failures as exc:
        refuse(program, describe(exc))
    except psycopg.Error as exc:
        refuse(program, f"PostgreSQL: {exc}")
