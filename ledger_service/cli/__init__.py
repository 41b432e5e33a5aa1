"""ledgerctl: the operator's tools for the ledger. Every answer comes from the event log.

Commands read PostgreSQL (DATABASE_URL, or the embedded server of ``make run`` under RUN_DIR)
and, for dead letters, NATS (NATS_URL). They never change an event: ``rebuild`` and
``catch-up`` write projections only, ``dead-letters retry`` republishes a message, ``db
grant-runtime-role`` grants a role membership of the runtime group.

Exit codes: 0 ok; 1 verify found a divergence (or retry failed); 2 a usage or connection error;
3 verify found projections behind the log.

With LEDGER_DATABASES (the partition -> database map, ledger_service/databases.py) the
commands over the whole ledger (verify, anchor, rebuild, catch-up, status, export) run on each
database of the map in turn, each reported under its group, and the exit code is the worst
of them; the commands of one account (balance, events) go to its account's database.

One module per command group, each on the shared wiring of ``tools``; the queries they run are
the projections' own (projections/eventlog.py, runner.py, verify.py, ledger_service/lag.py,
anchors.py), never copies:

- ``accounts``: balance
- ``audit``: verify, anchor
- ``followers``: rebuild, catch-up, status
- ``events``: events, export
- ``dead_letters``: dead-letters list, show, retry
- ``db``: db grant-runtime-role
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ledger_service.cli import accounts, audit, db, dead_letters, events, followers
from ledger_service.cli.events import AuditRecord, audit_records
from ledger_service.cli.tools import Failure, Tools, err, parse_account, parse_instant
from ledger_service.domain.chain import configure_chain_keys
from ledger_service.settings import LedgerToolSettings
from services.embedded import embedded_database_url
from services.logging import configure_logging
from services.settings import SettingsError, load_tool_settings

__all__ = ["AuditRecord", "Failure", "app", "audit_records", "parse_account", "parse_instant"]

app = typer.Typer(
    name="ledgerctl",
    help="Operator tools for the billing ledger: balances replayed from the log, verification"
         " of every hash, posting and projection, projection rebuilds, raw event exports and"
         " intake dead letters.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
# In this order in `ledgerctl --help`.
for group in (accounts, audit, followers, events):
    app.add_typer(group.commands)
app.add_typer(dead_letters.commands, name="dead-letters")
app.add_typer(db.commands, name="db")


@app.callback()
def main(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="PostgreSQL URL; default: DATABASE_URL, or make run's embedded"
        " server", show_default=False)] = None,
    nats_url: Annotated[str | None, typer.Option(
        "--nats-url", help="NATS URL; default: NATS_URL", show_default=False)] = None,
) -> None:
    """Operator tools for the billing ledger."""
    # Output is for the operator; only warnings and errors go to the log (on stderr).
    configure_logging(service="ledgerctl", level="WARNING", fmt="console")
    try:
        settings = load_tool_settings("ledger_service", cls=LedgerToolSettings)
        configure_chain_keys(settings.keyring())
        databases = settings.database_map()
    except SettingsError as exc:
        err.print(f"[red]ledgerctl:[/red] {exc}")
        raise typer.Exit(2) from None
    database = database_url or settings.database_url or embedded_database_url(
        Path(settings.run_dir))
    ctx.obj = Tools(database, nats_url or settings.nats_url, settings, databases=databases)
