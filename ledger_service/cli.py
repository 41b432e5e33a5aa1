"""ledgerctl: the operator's tools for the ledger. Every answer comes from the event log.

Commands read PostgreSQL (DATABASE_URL, or the embedded server of ``make run`` under RUN_DIR)
and, for dead letters, NATS (NATS_URL). They never change an event: ``rebuild`` and
``catch-up`` write projections only, ``dead-letters retry`` republishes a message.

Exit codes: 0 ok; 1 verify found a divergence (or retry failed); 2 a usage or connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Final, TextIO
from uuid import UUID

import msgspec
import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.deadletter import DeadLetter
from contracts.ledger import LedgerAnchor
from contracts.money import format_micros
from contracts.subjects import DEADLETTERS
from ledger_service.anchors import append_to_file, make_anchor, read_anchor_file
from ledger_service.app.ledger import LedgerApplication, ledger_env
from ledger_service.csv_cells import spreadsheet_row
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.chain import (
    GENESIS_HASH,
    configure_chain_keys,
    event_payload,
    is_upcast_class,
    stored_payload,
)
from ledger_service.domain.naming import event_name
from ledger_service.domain.times import format_time
from ledger_service.lag import LAG_ALERT_S_DEFAULT, FollowerLag, read_lags
from ledger_service.projections.builders import PROJECTION_NAMES
from ledger_service.projections.decoding import ROW_COLUMNS, EventDecoder, StoredRow, stored_row
from ledger_service.projections.replay import replay_account
from ledger_service.projections.runner import (
    BATCH_NOTIFICATIONS_MAX,
    ProjectionRunner,
    RebuildInProgress,
    account_loader,
    connector,
    quarantined_events,
    rebuild,
)
from ledger_service.projections.verify import VerifyReport, verify, verify_anchors
from ledger_service.settings import LedgerToolSettings, parse_seed
from services.broker import nats_servers
from services.database import eventsourcing_env, redact_url
from services.embedded import embedded_database_url
from services.logging import configure_logging
from services.settings import SettingsError, load_tool_settings

SCHEMA: Final = "ledger"
DEADLETTER_STREAM: Final = "DEADLETTER"
EXPORT_ROWS_FETCHED_PER_ROUND_TRIP: Final = 5_000
DIVERGENCES_SHOWN_MAX: Final = 200

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
dead_letters_app = typer.Typer(
    help="The intake's dead letters (stream DEADLETTER, subjects deadletter.v1.>): messages a"
         " consumer could not process, kept with the reason.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class Failure(Exception):
    """A readable reason to stop with exit code 2."""


# ------------------------------------------------------------------ wiring


@dataclass
class Tools:
    database_url: str | None
    nats_url: str | None
    keys: LedgerToolSettings = field(default_factory=LedgerToolSettings)
    _app: LedgerApplication | None = field(default=None, repr=False)

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
    except SettingsError as exc:
        err.print(f"[red]ledgerctl:[/red] {exc}")
        raise typer.Exit(2) from None
    database = database_url or settings.database_url or embedded_database_url(
        Path(settings.run_dir))
    ctx.obj = Tools(database, nats_url or settings.nats_url, settings)


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


# ------------------------------------------------------------------ balance


@app.command("balance", epilog="Examples:\n\n  ledgerctl balance 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
             "  ledgerctl balance 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --as-of 2026-11-01T00:00:00Z"
             "\n\n  ledgerctl balance 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --json")
def balance(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="The account id (UUID)")],
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Replay only the events recorded at or before this RFC 3339 time")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Replay an account's events from the log (no snapshot, no projection) and show its
    balance, available, held and credits, now or at --as-of."""

    def command() -> None:
        account_id = parse_account(account)
        moment = parse_instant(as_of, "--as-of")
        t = tools(ctx)
        with t.connect() as conn:
            replayed = replay_account(conn, t.decoder, account_id, moment)
        if replayed is None:
            when = f" at {format_time(moment)}" if moment else ""
            raise Failure(f"account {account_id} has no events{when}")
        view = balance_view(replayed.account, replayed.events, replayed.position, moment)
        if as_json:
            out.print_json(data=view)
        else:
            print_balance(view)

    run(command, ctx)


def balance_view(account: BillingAccount, events: int, position: int,
                 as_of: datetime | None) -> dict[str, Any]:
    settings = account.settings
    return {
        "account_id": str(account.id), "type": settings.account_type,
        "status": "closed" if settings.closed else "open", "currency": settings.currency,
        "as_of": format_time(as_of) if as_of else None, "events_replayed": events,
        "version": account.version, "position": position,
        "last_event_at": format_time(account.modified_on),
        "balance": format_micros(account.balance_micros),
        "available": format_micros(account.available_micros),
        "held": format_micros(account.held_micros),
        "credit_limit": format_micros(settings.credit_limit_micros)
        if settings.account_type == "postpay" else None,
        "credits": [{"grant_id": g.grant_id, "kind": g.kind,
                     "granted": format_micros(g.granted_micros),
                     "remaining": format_micros(g.remaining_micros), "expires_at": g.expires_at}
                    for g in account.grants],
        "open_holds": [{"hold_id": h.hold_id, "product": h.product, "quantity": h.quantity,
                        "amount": format_micros(h.amount_micros), "expires_at": h.expires_at}
                       for h in account.open_holds],
    }


def print_balance(view: dict[str, Any]) -> None:
    when = view["as_of"] or "now"
    out.print(f"[bold]Account {view['account_id']}[/bold]  {view['type']}, {view['currency']},"
              f" {view['status']}")
    out.print(f"Replayed {view['events_replayed']} events from the log (as of {when}; last:"
              f" version {view['version']} at {view['last_event_at']}, position"
              f" {view['position']})")
    summary = Table(show_header=True, box=None)
    for column in ("balance", "available", "held", "credit limit"):
        summary.add_column(column, justify="right")
    summary.add_row(view["balance"], view["available"], view["held"],
                    view["credit_limit"] or "-")
    out.print(summary)
    if view["credits"]:
        credits = Table(title="Credits (in the order debits spend them)", title_justify="left")
        for column in ("grant", "kind", "granted", "remaining", "expires"):
            credits.add_column(column)
        for c in view["credits"]:
            credits.add_row(c["grant_id"], c["kind"], c["granted"], c["remaining"],
                            c["expires_at"] or "never")
        out.print(credits)
    if view["open_holds"]:
        out.print(f"Open holds: {len(view['open_holds'])}")


# ------------------------------------------------------------------ verify


@app.command("verify", epilog="Examples:\n\n  ledgerctl verify\n\n"
             "  ledgerctl verify --account 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
             "  ledgerctl verify --json > report.json")
def verify_command(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(
        "--account", help="Check this account only (default: the whole log)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    anchors: Annotated[Path | None, typer.Option(
        "--anchors", help="Check the log against the signed anchors in this archived file"
        " (default: ANCHOR_DIR/anchors.jsonl when it exists, else the database's copies)",
        show_default=False)] = None,
    allow_unkeyed: Annotated[bool, typer.Option(
        "--allow-unkeyed", help="Accept events hashed before the chain was keyed")] = False,
    lag_max_s: Annotated[float, typer.Option(
        "--lag-max-s", min=0, help="Exit 3 when a projection has had events waiting longer"
        " than this at the time of checking")] = LAG_ALERT_S_DEFAULT,
) -> None:
    """Recompute everything from the log and report every divergence: keyed hash chains (an
    edited, removed or re-ordered event), signed anchors (history changed, truncated or
    restored below an anchored position, even with every hash recomputed), postings that do
    not sum to zero per currency, stated balances that differ from the replay, projection rows
    (balances, statement, usage, holds) that differ from what the replay says they should be,
    and snapshots (which loading an account starts from) that differ from the replay at their
    version. Exits 1 on any divergence; else 3 when a projection is behind by more than
    --lag-max-s (its rows are checked at its own position, so a stuck projection would
    otherwise pass)."""

    def command() -> int:
        account_id = parse_account(account) if account else None
        t = tools(ctx)
        with t.connect() as conn:
            archived, source = _anchors_to_check(conn, t.keys, anchors)
            total = _events_to_check(conn, account_id)
            with progress_bar("verify") as bar:
                task = bar.add_task("verify", total=total, rate="")

                def advance(done: int) -> None:
                    bar.update(task, completed=done,
                               rate=rate_text(done, bar.tasks[task].elapsed))

                report = verify(conn, t.decoder, account_id=account_id, progress=advance,
                                allow_unkeyed=allow_unkeyed)
                bar.update(task, completed=total)
            if account_id is None:
                verify_anchors(conn, archived, t.keys.trusted_anchor_key(), report)
                if report.anchors_checked:
                    err.print(f"Checked {report.anchors_checked} anchors from {source}.")
            lags = read_lags(conn)
        # the projections only: their rows are what verify checks (status shows the publisher)
        behind = [lag for lag in lags if lag.kind == "projection" and lag.stuck(lag_max_s)]
        if as_json:
            out.print_json(data={**report_json(report),
                                 "lag": [lag_json(lag) for lag in lags],
                                 "behind": [lag.name for lag in behind]})
        else:
            print_report(report)
            print_behind(behind, lag_max_s)
        if not report.ok:
            return 1
        return 3 if behind else 0

    run(command, ctx)



def _anchors_to_check(conn: psycopg.Connection[Any], keys: LedgerToolSettings,
                      path: Path | None) -> tuple[list[LedgerAnchor], str]:
    if path is None and (keys.anchor_path / "anchors.jsonl").exists():
        path = keys.anchor_path / "anchors.jsonl"
    if path is not None:
        try:
            return read_anchor_file(path), str(path)
        except (OSError, msgspec.DecodeError) as exc:
            raise Failure(f"cannot read anchors from {path}: {exc}") from None
    rows = conn.execute("SELECT body FROM anchors ORDER BY position").fetchall()
    return ([msgspec.json.decode(bytes(body), type=LedgerAnchor) for (body,) in rows],
            "the database's copies (pass --anchors FILE for the archived proof)")


@app.command("anchor", epilog="Example:\n\n  ledgerctl anchor")
def anchor_command(ctx: typer.Context) -> None:
    """Anchor the log now: a signed checkpoint of every account's chain head, stored, appended
    to ANCHOR_DIR/anchors.jsonl, and published by the running service's follower."""

    def command() -> int:
        t = tools(ctx)
        with t.connect() as conn:
            conn.autocommit = True
            made = make_anchor(conn, parse_seed(t.keys.anchor_signing_key), reason="manual")
        if made is None:
            out.print("This position is anchored already.")
            return 0
        path = append_to_file(t.keys.anchor_path, made)
        out.print(f"Anchored position {made.position} over {made.accounts:,} accounts:"
                  f" root {made.merkle_root} ({path}).")
        return 0

    run(command, ctx)


def _events_to_check(conn: psycopg.Connection[Any], account_id: UUID | None) -> int:
    if account_id is None:
        row = conn.execute("SELECT count(*) FROM ledger_events").fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM ledger_events WHERE originator_id = %s",
                           (account_id,)).fetchone()
    return int(row[0]) if row else 0


def report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok, "accounts": report.accounts, "events": report.events,
        "log_position": report.log_position, "projection_positions": report.positions,
        "postings_total_micros": report.postings_total, "elapsed_s": round(report.elapsed_s, 3),
        "divergences": [{"account_id": str(d.account_id) if d.account_id else None,
                         "check": d.check, "where": d.where, "expected": d.expected,
                         "found": d.found} for d in report.divergences],
    }


def print_report(report: VerifyReport) -> None:
    totals = ", ".join(f"{c} {format_micros(v)}" for c, v in sorted(report.postings_total.items()))
    lagging = {n: p for n, p in report.positions.items() if p < report.log_position}
    out.print(f"Checked {report.events:,} events of {report.accounts:,}"
              f" account{'' if report.accounts == 1 else 's'} in"
              f" {report.elapsed_s:.1f} s (log position {report.log_position}).")
    out.print(f"Sum of all postings: {totals or 'none'}.")
    if report.unkeyed_events:
        out.print(f"{report.unkeyed_events:,} events carry an unkeyed hash (written before the"
                  " chain was keyed).")
    if lagging:
        out.print("Projections behind the log (compared at their own position): "
                  + ", ".join(f"{n} at {p}" for n, p in sorted(lagging.items())))
    if report.ok:
        out.print("[green]OK[/green]: every hash, posting, balance, projection row and"
                  " snapshot agrees with the log.")
        return
    out.print(f"[red]{len(report.divergences)} divergences[/red]:")
    shown = report.divergences[:DIVERGENCES_SHOWN_MAX]
    for account_id, found in groupby(shown, key=lambda d: d.account_id):
        out.print(f"\n[bold]{'Account ' + str(account_id) if account_id else 'Whole log'}[/bold]")
        for d in found:
            out.print(f"  {d.check:<22} {d.where}\n      expected {d.expected}\n"
                      f"      found    {d.found}")
    if len(report.divergences) > DIVERGENCES_SHOWN_MAX:
        out.print(f"... and {len(report.divergences) - DIVERGENCES_SHOWN_MAX} more (--json for all)")
    out.print("[red]DIVERGENT[/red]: the log or a projection does not agree with the replay.")


def print_behind(behind: list[FollowerLag], lag_max_s: float) -> None:
    if not behind:
        return
    err.print(f"[yellow]WARNING[/yellow]: events have waited more than {lag_max_s:g} s for: "
              + ", ".join(f"{lag.name} ({lag.behind_events} events, oldest {lag.lag_s:.0f} s)"
                          for lag in behind)
              + ". Is the ledger service (its follower process) running? `ledgerctl status`.")


# ------------------------------------------------------------------ projections


@app.command("rebuild", epilog="Examples:\n\n  ledgerctl rebuild statement\n\n"
             "  ledgerctl rebuild all")
def rebuild_command(
    ctx: typer.Context,
    projection: Annotated[str, typer.Argument(
        help=f"One of {', '.join(PROJECTION_NAMES)}, or all")],
) -> None:
    """Rebuild a projection from the whole log into a shadow table while the service keeps
    running, then swap it in at once: reads answer from the old rows until the new ones are
    complete."""

    def command() -> None:
        names = PROJECTION_NAMES if projection == "all" else (projection,)
        if not set(names) <= set(PROJECTION_NAMES):
            raise Failure(f"unknown projection {projection!r}; one of"
                          f" {', '.join(PROJECTION_NAMES)}, all")
        t = tools(ctx)
        url = t.require_database()
        for name in names:
            with progress_bar(name) as bar:
                task = bar.add_task(f"rebuild {name}", total=None, rate="")

                def advance(position: int, head: int, events: int, task: Any = task,
                            bar: Progress = bar) -> None:
                    bar.update(task, completed=position, total=max(head, position),
                               rate=rate_text(events, bar.tasks[task].elapsed))

                try:
                    result = rebuild(connector(url, SCHEMA), t.decoder,
                                     account_loader(t.ledger_app), name, progress=advance)
                except RebuildInProgress as exc:
                    raise Failure(str(exc)) from None
            out.print(f"Rebuilt {name}: {result.events:,} events, now at position"
                      f" {result.position}.")

    run(command, ctx)


@app.command("catch-up", epilog="Examples:\n\n  ledgerctl catch-up\n\n"
             "  ledgerctl catch-up --batch-size 2000")
def catch_up_command(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, max=100_000,
        help="Notifications in the first transaction; while far behind, batches grow"
             " fourfold per full batch up to 10,000 (or this size, if larger)")] = BATCH_NOTIFICATIONS_MAX,
) -> None:
    """Apply the events the projections have not seen yet, then stop: what the service's
    projection runner does continuously (useful while the service is down)."""

    def command() -> None:
        t = tools(ctx)
        runner = ProjectionRunner(connector(t.require_database(), SCHEMA), t.decoder,
                                  account_loader(t.ledger_app), batch_size=batch_size)
        try:
            with progress_bar("catch-up") as bar:
                task = bar.add_task("catch-up", total=None, rate="")

                def advance(position: int, head: int, events: int) -> None:
                    bar.update(task, completed=position, total=max(head, position),
                               rate=rate_text(events, bar.tasks[task].elapsed))

                events = runner.catch_up(advance)
        finally:
            runner.close()
        out.print(f"Applied {events:,} events; every projection is at the head of the log.")

    run(command, ctx)


@app.command("status", epilog="Example:\n\n  ledgerctl status\n\n  ledgerctl status --json")
def status_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lags as JSON")] = False,
) -> None:
    """Each follower of the log (the projections and the publisher of ledger.v1.events): its
    position against the head of the log, the events it has not applied yet and the age of
    the oldest of them (its lag), when a projection last moved, and the events a projection
    quarantined (could not apply, and skipped)."""

    def command() -> None:
        with tools(ctx).connect() as conn:
            lags = read_lags(conn)
            moved = dict(conn.execute("SELECT name, updated_at FROM projection_positions")
                         .fetchall())
            quarantined = quarantined_events(conn)
        if as_json:
            out.print_json(data={"followers": [lag_json(lag) for lag in lags]})
            return
        head = max((lag.head for lag in lags), default=0)
        table = Table(title=f"Log head: position {head}", title_justify="left")
        for column in ("follower", "kind", "position", "behind", "lag", "updated at"):
            table.add_column(column)
        for lag in lags:
            updated_at = moved.get(lag.name) if lag.kind == "projection" else None
            table.add_row(lag.name, lag.kind, str(lag.position), str(lag.behind_events),
                          f"{lag.lag_s:.1f} s", format_time(updated_at) if updated_at else "")
        out.print(table)
        if not quarantined:
            out.print("No quarantined events.")
            return
        held = Table(title=f"[red]{len(quarantined)} quarantined events[/red]: the projection"
                     " skipped them; fix the cause, then `ledgerctl rebuild <projection>`",
                     title_justify="left")
        for column in ("projection", "position", "account", "event", "error", "since"):
            held.add_column(column, overflow="fold")
        for name, position, account_id, event_type, error, since in quarantined:
            held.add_row(name, str(position), str(account_id), event_type, error[:200],
                         format_time(since))
        out.print(held)

    run(command, ctx)


def lag_json(lag: FollowerLag) -> dict[str, Any]:
    return {"kind": lag.kind, "name": lag.name, "position": lag.position, "head": lag.head,
            "behind_events": lag.behind_events, "lag_s": round(lag.lag_s, 3)}


# ------------------------------------------------------------------ raw events


@dataclass(frozen=True, slots=True)
class AuditRecord:
    position: int
    account_id: UUID
    version: int
    type: str
    recorded_at: str
    previous_hash: str | None
    hash: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "account_id": str(self.account_id),
                "version": self.version, "type": self.type, "recorded_at": self.recorded_at,
                "previous_hash": self.previous_hash, "hash": self.hash, "data": self.data}


def audit_records(conn: psycopg.Connection[Any], decoder: EventDecoder,
                  account_id: UUID | None) -> Iterator[AuditRecord]:
    """Stored events with their place in the log and their link in the hash chain: one
    account in version order, or the whole log in log order."""
    last_hash: dict[UUID, str] = {}
    with conn.transaction(), conn.cursor(name="ledgerctl_events", binary=True) as cur:
        cur.itersize = EXPORT_ROWS_FETCHED_PER_ROUND_TRIP
        if account_id is None:
            cur.execute(f"SELECT {ROW_COLUMNS} FROM ledger_events"  # noqa: S608
                        " ORDER BY notification_id")
        else:
            cur.execute(f"SELECT {ROW_COLUMNS} FROM ledger_events"  # noqa: S608
                        " WHERE originator_id = %s ORDER BY originator_version", (account_id,))
        for values in cur:
            row = stored_row(values)
            yield _audit_record(row, decoder, last_hash)


def _audit_record(row: StoredRow, decoder: EventDecoder,
                  last_hash: dict[UUID, str]) -> AuditRecord:
    event = decoder.decode(row)
    chain_hash = getattr(event, "chain_hash", None)
    previous = last_hash.get(row.originator_id)
    if previous is None and row.originator_version == 1 and chain_hash is not None:
        previous = GENESIS_HASH
    if chain_hash is not None:
        last_hash[row.originator_id] = chain_hash
    return AuditRecord(row.position, row.originator_id, row.originator_version,
                       event_name(type(event)), format_time(event.timestamp), previous, chain_hash,
                       # what the hash covers: an upcast event's payload as it was stored
                       stored_payload(row.state) if is_upcast_class(type(event))
                       else event_payload(event))


def summary_of(record: AuditRecord) -> str:
    data = record.data
    if record.type == "UsageRecorded":
        lines = data.get("lines", [])
        total = sum(line["amount_micros"] for line in lines)
        return f"{len(lines)} line(s), -{format_micros(total)}"
    if "amount_micros" in data:
        return format_micros(int(data["amount_micros"]))
    if record.type == "Opened":
        return f"{data.get('account_type')} {data.get('currency')}"
    return ""


@app.command("events", epilog="Examples:\n\n  ledgerctl events 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
             "  ledgerctl events 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --json | jq .type")
def events_command(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="The account id (UUID)")],
    last: Annotated[int, typer.Option("--last", min=0,
                                      help="Show only the newest N events (0: all)")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="JSON lines: one object per event, with its full data")] = False,
) -> None:
    """An account's raw events as stored, oldest first: log position, version, type, time,
    and the hash chain link (previous hash -> hash)."""

    def command() -> None:
        account_id = parse_account(account)
        t = tools(ctx)
        with t.connect() as conn:
            records = list(audit_records(conn, t.decoder, account_id))
        if not records:
            raise Failure(f"account {account_id} has no events")
        shown = records[-last:] if last else records
        if as_json:
            for record in shown:
                sys.stdout.write(_json.encode(record.to_dict()).decode() + "\n")
            return
        table = Table(title=f"Account {account_id}: {len(records)} events", title_justify="left")
        for column in ("position", "version", "type", "recorded at", "amount", "hash"):
            table.add_column(column)
        for r in shown:
            table.add_row(str(r.position), str(r.version), r.type, r.recorded_at, summary_of(r),
                          (r.hash or "-")[:16])
        out.print(table)

    run(command, ctx)


@app.command("export", epilog="Examples:\n\n"
             "  ledgerctl export --account 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11 --format csv"
             " --output account.csv\n\n"
             "  ledgerctl export --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z"
             " --format jsonl > november.jsonl")
def export_command(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(
        "--account", help="Only this account (default: every account, in log order)")] = None,
    since: Annotated[str | None, typer.Option(
        "--from", help="Events recorded at or after this RFC 3339 time")] = None,
    until: Annotated[str | None, typer.Option(
        "--to", help="Events recorded before this RFC 3339 time")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "jsonl",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file (default: standard output)")] = None,
) -> None:
    """The raw events for auditors, with positions and hashes: position, account_id, version,
    type, recorded_at, previous_hash, hash and data (the hashed payload, as JSON). Streams: the
    log is never held in memory."""

    def command() -> None:
        if fmt not in ("csv", "jsonl"):
            raise Failure(f"--format must be csv or jsonl, got {fmt!r}")
        account_id = parse_account(account) if account else None
        start, end = parse_instant(since, "--from"), parse_instant(until, "--to")
        start_text = format_time(start) if start else None
        end_text = format_time(end) if end else None
        t = tools(ctx)
        with t.connect() as conn, _open_output(output) as sink:
            writer = _exporter(fmt, sink)
            written = 0
            for record in audit_records(conn, t.decoder, account_id):
                if (start_text and record.recorded_at < start_text) or (
                        end_text and record.recorded_at >= end_text):
                    continue
                writer(record)
                written += 1
        err.print(f"Exported {written:,} events" + (f" to {output}" if output else "") + ".")

    run(command, ctx)


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        yield handle


EXPORT_COLUMNS: Final = ("position", "account_id", "version", "type", "recorded_at",
                         "previous_hash", "hash", "data")
_json = msgspec.json.Encoder(order="sorted")


def _exporter(fmt: str, sink: TextIO) -> Callable[[AuditRecord], None]:
    if fmt == "jsonl":
        def write_jsonl(record: AuditRecord) -> None:
            sink.write(_json.encode(record.to_dict()).decode() + "\n")
        return write_jsonl
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)

    def write_csv(record: AuditRecord) -> None:
        writer.writerow(spreadsheet_row((
            record.position, record.account_id, record.version, record.type, record.recorded_at,
            record.previous_hash or "", record.hash or "", _json.encode(record.data).decode())))
    return write_csv


# ------------------------------------------------------------------ dead letters


@dataclass(frozen=True, slots=True)
class StoredLetter:
    sequence: int  # in the DEADLETTER stream
    letter: DeadLetter


async def _letters(nats_url: str, subject: str | None, limit: int) -> list[StoredLetter]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_servers(nats_url), connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(DEADLETTER_STREAM)
        except NotFoundError:
            return []
        found: list[StoredLetter] = []
        sequence = info.state.first_seq
        pattern = "deadletter.v1." + subject if subject else DEADLETTERS
        while True:
            try:
                msg = await js.get_msg(DEADLETTER_STREAM, seq=sequence, subject=pattern, next=True)
            except NotFoundError:
                break
            assert msg.seq is not None
            found.append(StoredLetter(msg.seq, _decode_letter(msg.data or b"", msg.subject)))
            sequence = msg.seq + 1
        return found[-limit:] if limit else found
    finally:
        await nc.close()


def _decode_letter(data: bytes, subject: str | None) -> DeadLetter:
    try:
        return msgspec.json.decode(data, type=DeadLetter)
    except msgspec.DecodeError as exc:
        return DeadLetter(dead_letter_id="dl-unreadable", subject=subject or "?",
                          reason="invalid_payload", detail=f"not a dead letter: {exc}",
                          payload=data.decode("utf-8", errors="replace")[:10_000],
                          received_at=datetime.now(UTC))


def _find(letters: list[StoredLetter], key: str) -> StoredLetter:
    for stored in letters:
        if key in (stored.letter.dead_letter_id, str(stored.sequence)):
            return stored
    raise Failure(f"no dead letter {key!r} (give its dead_letter_id or stream sequence)")


@dead_letters_app.command("list", epilog="Examples:\n\n  ledgerctl dead-letters list\n\n"
                          "  ledgerctl dead-letters list --subject usage.v1.recorded --limit 20")
def dead_letters_list(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="Only dead letters of this original subject")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="The newest N (0: all)")] = 100,
) -> None:
    """The dead letters, oldest first: sequence, id, original subject, reason, when, detail."""

    def command() -> None:
        letters = asyncio.run(_letters(tools(ctx).require_nats(), subject, limit))
        table = Table(title=f"{len(letters)} dead letters", title_justify="left")
        for column in ("seq", "dead_letter_id", "subject", "reason", "received at", "detail"):
            table.add_column(column, overflow="fold")
        for s in letters:
            table.add_row(str(s.sequence), s.letter.dead_letter_id, s.letter.subject,
                          s.letter.reason, format_time(s.letter.received_at),
                          # escaped: a detail or marker in brackets is text, not markup
                          escape(s.letter.detail[:120] + (" [payload truncated]"
                                                          if s.letter.payload_truncated else "")))
        out.print(table)

    run(command, ctx)


@dead_letters_app.command("show", epilog="Example:\n\n  ledgerctl dead-letters show dl-3a1f...")
def dead_letters_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="dead_letter_id or stream sequence")],
) -> None:
    """One dead letter in full: the reason, the detail and the original payload."""

    def command() -> None:
        stored = _find(asyncio.run(_letters(tools(ctx).require_nats(), None, 0)), key)
        data = msgspec.to_builtins(stored.letter)
        with contextlib.suppress(ValueError):
            data["payload"] = json.loads(stored.letter.payload)
        out.print_json(data={"sequence": stored.sequence, **data})

    run(command, ctx)


@dead_letters_app.command("retry", epilog="Examples:\n\n"
                          "  ledgerctl dead-letters retry dl-3a1f...\n\n"
                          "  ledgerctl dead-letters retry --all --subject usage.v1.recorded")
def dead_letters_retry(
    ctx: typer.Context,
    keys: Annotated[list[str] | None, typer.Argument(
        help="dead_letter_id(s) or stream sequence(s)", show_default=False)] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Every dead letter (of --subject)")] = False,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="With --all: only this original subject")] = None,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the dead letter after republishing it")] = False,
) -> None:
    """Republish the original payload to the original subject, once the cause is fixed. The
    consumer applies it exactly once (its own keys, e.g. the usage event_id, still decide);
    Nats-Msg-Id is retry:<dead_letter_id>, so a double retry within the stream's duplicate
    window is dropped. A republished dead letter is removed unless --keep; if it fails again, a
    new dead letter records why."""

    def command() -> int:
        if not keys and not retry_all:
            raise Failure("name dead letters to retry, or pass --all")
        results = asyncio.run(_retry(tools(ctx).require_nats(), keys or [], retry_all, subject,
                                     keep))
        failed = 0
        for stored, outcome in results:
            out.print(f"{stored.letter.dead_letter_id} (seq {stored.sequence}) ->"
                      f" {stored.letter.subject}: {outcome}")
            failed += outcome.startswith("failed")
        if not results:
            out.print("No dead letters to retry.")
        return 1 if failed else 0

    run(command, ctx)


async def _retry(nats_url: str, keys: list[str], retry_all: bool, subject: str | None,
                 keep: bool) -> list[tuple[StoredLetter, str]]:
    import nats

    letters = await _letters(nats_url, subject, 0)
    chosen = letters if retry_all else [_find(letters, key) for key in keys]
    results: list[tuple[StoredLetter, str]] = []
    nc = await nats.connect(nats_servers(nats_url), connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for stored in chosen:
            letter = stored.letter
            if letter.payload_truncated:
                # Its payload is a cut copy: republishing it would be a different message.
                results.append((stored, f"failed: the payload was truncated (original"
                                        f" {letter.payload_bytes} bytes, sha256"
                                        f" {letter.payload_sha256}); re-send it from its"
                                        " producer"))
                continue
            try:
                ack = await js.publish(letter.subject, letter.payload.encode(),
                                       headers={"Nats-Msg-Id": f"retry:{letter.dead_letter_id}"})
            except Exception as exc:
                results.append((stored, f"failed: {type(exc).__name__}: {exc}"))
                continue
            outcome = "already republished recently (duplicate dropped)" if ack.duplicate \
                else f"republished as {ack.stream} seq {ack.seq}"
            if not keep:
                await js.delete_msg(DEADLETTER_STREAM, stored.sequence)
                outcome += "; dead letter removed"
            results.append((stored, outcome))
    finally:
        await nc.close()
    return results


if __name__ == "__main__":
    app()
