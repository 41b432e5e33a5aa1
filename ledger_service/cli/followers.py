"""`ledgerctl rebuild`, `catch-up` and `status`: the followers of the log (the projections
and the publisher), rebuilt, caught up, and how far behind they are."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from ledger_service.cli.tools import (
    SCHEMA,
    Failure,
    Tools,
    out,
    progress_bar,
    rate_text,
    run,
    tools,
)
from ledger_service.domain.times import format_time
from ledger_service.lag import FollowerLag, read_lags
from ledger_service.projections.builders import PROJECTION_NAMES
from ledger_service.projections.runner import (
    BATCH_NOTIFICATIONS_MAX,
    ProjectionRunner,
    Quarantined,
    RebuildInProgress,
    account_loader,
    connector,
    quarantined_events,
    rebuild,
)

commands = typer.Typer()


@commands.command("rebuild", epilog="Examples:\n\n  ledgerctl rebuild statement\n\n"
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
        for t in tools(ctx).each_database():
            if t.heading:
                out.print(f"[bold]{t.heading}[/bold]")
            _rebuild(t, names)

    run(command, ctx)


def _rebuild(t: Tools, names: tuple[str, ...]) -> None:
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


@commands.command("catch-up", epilog="Examples:\n\n  ledgerctl catch-up\n\n"
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
        for t in tools(ctx).each_database():
            if t.heading:
                out.print(f"[bold]{t.heading}[/bold]")
            _catch_up(t, batch_size)

    run(command, ctx)


def _catch_up(t: Tools, batch_size: int) -> None:
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


@commands.command("status", epilog="Example:\n\n  ledgerctl status\n\n  ledgerctl status --json")
def status_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lags as JSON")] = False,
) -> None:
    """Each follower of the log (the projections and the publisher of ledger.v1.events): its
    position against the head of the log, the events it has not applied yet and the age of
    the oldest of them (its lag), when a projection last moved, and the events a projection
    quarantined (could not apply, and skipped)."""

    def command() -> None:
        root = tools(ctx)
        alert_s = root.keys.lag_alert_s
        groups = []
        for t in root.each_database():
            with t.connect() as conn:
                lags = read_lags(conn)
                quarantined = quarantined_events(conn)
            if as_json:
                groups.append({**({"group": t.group.name} if t.group else {}),
                               "followers": [lag.as_json(alert_s) for lag in lags]})
            else:
                _print_status(t.heading, lags, quarantined)
        if as_json:
            out.print_json(data=groups[0] if root.databases is None else {"groups": groups})

    run(command, ctx)


def _print_status(heading: str, lags: list[FollowerLag],
                  quarantined: list[Quarantined]) -> None:
    head = max((lag.head for lag in lags), default=0)
    table = Table(title=f"{heading + ': ' if heading else ''}Log head: position {head}",
                  title_justify="left")
    for column in ("follower", "kind", "position", "behind", "lag", "updated at"):
        table.add_column(column)
    for lag in lags:
        table.add_row(lag.name, lag.kind, str(lag.position), str(lag.behind_events),
                      f"{lag.lag_s:.1f} s",
                      format_time(lag.updated_at) if lag.updated_at else "")
    out.print(table)
    if not quarantined:
        out.print("No quarantined events.")
        return
    held = Table(title=f"[red]{len(quarantined)} quarantined events[/red]: the projection"
                 " skipped them; fix the cause, then `ledgerctl rebuild <projection>`",
                 title_justify="left")
    for column in ("projection", "position", "account", "event", "error", "since"):
        held.add_column(column, overflow="fold")
    for q in quarantined:
        held.add_row(q.projection, str(q.position), str(q.account_id), q.event_type,
                     q.error[:200], format_time(q.quarantined_at))
    out.print(held)
