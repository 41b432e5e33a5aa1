"""What every ledgerctl command stands on: the connections it opens, the failures it reports,
the way it turns them into exit codes, and the parsing and progress bars they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger_service.app.ledger import LedgerApplication, ledger_env
from ledger_service.databases import DatabaseGroup, DatabaseMap
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.runner import connector
from ledger_service.settings import LedgerToolSettings
from services.database import eventsourcing_env, redact_url

SCHEMA: Final = "ledger"

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class Failure(Exception):
    """A readable reason to stop with exit code 2."""


@dataclass
class Tools:
    database_url: str | None
    nats_url: str | None
    keys: LedgerToolSettings = field(default_factory=LedgerToolSettings)
    _app: LedgerApplication | None = field(default=None, repr=False)
    # LEDGER_DATABASES: the commands over the whole ledger go over each database of the map.
    databases: DatabaseMap | None = None
    group: DatabaseGroup | None = None  # the database of the map these tools are on
    _opened: list[Tools] = field(default_factory=list, repr=False)

    def each_database(self) -> list[Tools]:
        """These tools, or one per database of LEDGER_DATABASES (group 0 first), each with
        the anchors folder of its group (the service writes ANCHOR_DIR/g<n>)."""
        if self.databases is None:
            return [self]
        return [self.on(group) for group in self.databases]

    def of_account(self, account_id: UUID) -> Tools:
        """The tools on the database that holds `account_id`."""
        if self.databases is None:
            return self
        return self.on(self.databases.group_of_account(account_id))

    def on(self, group: DatabaseGroup) -> Tools:
        keys = msgspec.structs.replace(self.keys, anchor_dir=str(self.keys.anchor_path / group.name))
        opened = Tools(group.url, self.nats_url, keys, databases=self.databases, group=group)
        self._opened.append(opened)
        return opened

    @property
    def heading(self) -> str:
        return self.group.label if self.group is not None else ""

    def require_database(self) -> str:
        if not self.database_url:
            raise Failure("no database: set DATABASE_URL (make run prints it), or run next to"
                          " a `make run` stack")
        return self.database_url

    def require_nats(self) -> str:
        if not self.nats_url:
            raise Failure("no NATS: set NATS_URL (make run prints it)")
        return self.nats_url

    def connect(self) -> psycopg.Connection[Any]:
        url = self.require_database()
        try:
            return connector(url, SCHEMA)()
        except psycopg.OperationalError as exc:
            raise Failure(f"cannot connect to PostgreSQL at {redact_url(url)}: {exc}") from None

    @property
    def ledger_app(self) -> LedgerApplication:
        if self._app is None:
            env = ledger_env(eventsourcing_env(self.require_database(), SCHEMA,
                                               CREATE_TABLE="n"))
            self._app = LedgerApplication(env=env)
        return self._app

    @property
    def decoder(self) -> EventDecoder:
        return EventDecoder(self.ledger_app.mapper)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        for opened in self._opened:
            opened.close()


def tools(ctx: typer.Context) -> Tools:
    return ctx.ensure_object(Tools)


def run(command: Callable[[], int | None], ctx: typer.Context) -> None:
    """Run a command body, turning known failures into a message and exit code 2."""
    try:
        code = command() or 0
    except Failure as exc:
        err.print(f"[red]ledgerctl:[/red] {exc}")
        code = 2
    except psycopg.errors.UndefinedTable as exc:
        err.print(f"[red]ledgerctl:[/red] the ledger schema is missing a table ({exc}). Start the"
                  " service once, or run `python -m ledger_service migrate`.")
        code = 2
    except psycopg.OperationalError as exc:
        err.print(f"[red]ledgerctl:[/red] PostgreSQL: {exc}")
        code = 2
    finally:
        tools(ctx).close()
    raise typer.Exit(code)


def parse_instant(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Failure(f"{name} must be an RFC 3339 time such as 2026-11-22T10:00:00Z,"
                      f" got {text!r}") from None
    if moment.tzinfo is None:
        raise Failure(f"{name} needs a UTC offset (Z or +00:00): {text!r}")
    return moment.astimezone(UTC)


def parse_account(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise Failure(f"not an account id (a UUID): {text!r}") from None


def progress_bar(description: str) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
                    transient=False)


def rate_text(count: int, elapsed_s: float | None, unit: str = "events") -> str:
    if not elapsed_s:
        return ""
    return f"{count / elapsed_s:,.0f} {unit}/s"
