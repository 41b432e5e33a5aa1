"""`ledgerctl verify` and `ledgerctl anchor`: the log checked against itself, its projections
and its signed anchors; an anchor made on demand."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
import psycopg
import typer

from contracts.ledger import LedgerAnchor
from contracts.money import format_micros
from ledger_service.anchors import append_to_file, make_anchor, read_anchor_file, stored_anchors
from ledger_service.cli.tools import (
    Failure,
    Tools,
    err,
    out,
    parse_account,
    progress_bar,
    rate_text,
    run,
    tools,
)
from ledger_service.databases import DatabaseGroup, DatabaseMap
from ledger_service.lag import LAG_ALERT_S_DEFAULT, FollowerLag, read_lags
from ledger_service.projections.eventlog import events_count
from ledger_service.projections.verify import Divergence, VerifyReport, verify
from ledger_service.settings import LedgerToolSettings, parse_seed

DIVERGENCES_SHOWN_MAX: Final = 200
OPENED_TOPIC: Final = "ledger.account.Opened"  # one per account

commands = typer.Typer()


@commands.command("verify", epilog="Examples:\n\n  ledgerctl verify\n\n"
                  "  ledgerctl verify --account 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
                  "  ledgerctl verify --json > report.json")
def verify_command(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option(
        "--account", help="Check this account only (default: the whole log)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    anchors: Annotated[Path | None, typer.Option(
        "--anchors", help="Check the log against the signed anchors in this archived file"
        " (default: ANCHOR_DIR/anchors.jsonl when it exists, else the database's copies);"
        " with LEDGER_DATABASES a folder holding <group>/anchors.jsonl",
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
        root = tools(ctx)
        targets = [root.of_account(account_id)] if account_id else root.each_database()
        codes, reports = [], []
        for t in targets:
            if t.heading and not as_json:
                out.print(f"\n[bold]{t.heading}[/bold]")
            archive = anchors / t.group.name / "anchors.jsonl" \
                if anchors is not None and t.group is not None else anchors
            code, result = _verify_one(t, account_id, as_json, archive, allow_unkeyed, lag_max_s)
            codes.append(code)
            reports.append(result)
        code = 1 if 1 in codes else max(codes)
        if root.databases is None:
            if as_json:
                out.print_json(data=reports[0])
            return code
        if as_json:
            out.print_json(data={"ok": code == 0, "groups": reports})
        else:
            failed = [t.heading for t, c in zip(targets, codes, strict=True) if c == 1]
            out.print(f"\n{len(targets)} database{'s' if len(targets) > 1 else ''} checked: "
                      + ("[green]all OK[/green]" if not failed
                         else "[red]DIVERGENT[/red] in " + "; ".join(failed)))
        return code

    run(command, ctx)


def _verify_one(t: Tools, account_id: UUID | None, as_json: bool, anchors: Path | None,
                allow_unkeyed: bool, lag_max_s: float) -> tuple[int, dict[str, Any]]:
    """One database's verify: its exit code and its JSON report (printed here unless JSON
    was asked for)."""
    with t.connect() as conn:
        archived, source = _anchors_to_check(conn, t.keys, anchors)
        total = events_count(conn, account_id)
        with progress_bar("verify") as bar:
            task = bar.add_task("verify", total=total, rate="")

            def advance(done: int) -> None:
                bar.update(task, completed=done,
                           rate=rate_text(done, bar.tasks[task].elapsed))

            report = verify(conn, t.decoder, account_id=account_id, progress=advance,
                            allow_unkeyed=allow_unkeyed, anchors=archived,
                            trusted_anchor_key=t.keys.trusted_anchor_key())
            bar.update(task, completed=total)
        if report.anchors_checked:
            covered = (f"; {report.anchors_skipped} older interval anchors are covered by"
                       " the period close after them" if report.anchors_skipped else "")
            err.print(f"Checked {report.anchors_checked} anchors from {source}{covered}.")
        if t.group is not None and t.databases is not None:
            report.divergences.extend(misplaced_accounts(conn, t.databases, t.group,
                                                         account_id))
        lags = read_lags(conn)
    # the projections only: their rows are what verify checks (status shows the publisher)
    behind = [lag for lag in lags if lag.kind == "projection" and lag.stuck(lag_max_s)]
    result = {**report_json(report), "lag": [lag.as_json(lag_max_s) for lag in lags],
              "behind": [lag.name for lag in behind]}
    if t.group is not None:
        result = {"group": t.group.name, "database": t.heading, **result}
    if not as_json:
        print_report(report)
        print_behind(behind, lag_max_s)
    if not report.ok:
        return 1, result
    return (3 if behind else 0), result


def misplaced_accounts(conn: psycopg.Connection[Any], databases: DatabaseMap,
                       group: DatabaseGroup, account_id: UUID | None) -> list[Divergence]:
    """With LEDGER_DATABASES: the accounts opened in this database whose partition is
    another group's (the ledger would never read them here)."""
    rows = conn.execute("SELECT originator_id FROM ledger_events WHERE topic = %s"
                        " AND (%s::uuid IS NULL OR originator_id = %s)",
                        (OPENED_TOPIC, account_id, account_id)).fetchall()
    found = []
    for (opened,) in rows:
        home = databases.group_of_account(opened)
        if home.index != group.index:
            found.append(Divergence(opened, "database", group.label, home.label,
                                    f"stored in {group.name}"))
    return found


def _anchors_to_check(conn: psycopg.Connection[Any], keys: LedgerToolSettings,
                      path: Path | None) -> tuple[list[LedgerAnchor], str]:
    if path is None and (keys.anchor_path / "anchors.jsonl").exists():
        path = keys.anchor_path / "anchors.jsonl"
    if path is not None:
        try:
            return read_anchor_file(path), str(path)
        except (OSError, msgspec.DecodeError) as exc:
            raise Failure(f"cannot read anchors from {path}: {exc}") from None
    return (stored_anchors(conn),
            "the database's copies (pass --anchors FILE for the archived proof)")


@commands.command("anchor", epilog="Example:\n\n  ledgerctl anchor")
def anchor_command(ctx: typer.Context) -> None:
    """Anchor the log now: a signed checkpoint of every account's chain head, stored, appended
    to ANCHOR_DIR/anchors.jsonl, and published by the running service's follower."""

    def command() -> int:
        for t in tools(ctx).each_database():
            prefix = f"{t.heading}: " if t.heading else ""
            with t.connect() as conn:
                conn.autocommit = True
                made = make_anchor(conn, parse_seed(t.keys.anchor_signing_key), reason="manual",
                                   group=t.group.name if t.group else None)
            if made is None:
                out.print(f"{prefix}This position is anchored already.")
                continue
            path = append_to_file(t.keys.anchor_path, made)
            out.print(f"{prefix}Anchored position {made.position} over {made.accounts:,}"
                      f" accounts: root {made.merkle_root} ({path}).")
        return 0

    run(command, ctx)


def report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok, "accounts": report.accounts, "events": report.events,
        "log_position": report.log_position, "projection_positions": report.positions,
        "postings_total_micros": report.postings_total, "elapsed_s": round(report.elapsed_s, 3),
        "anchors_checked": report.anchors_checked, "anchors_skipped": report.anchors_skipped,
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
