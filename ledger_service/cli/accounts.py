"""`ledgerctl balance`: an account replayed from its events alone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts.money import format_micros
from ledger_service.cli.tools import Failure, out, parse_account, parse_instant, run, tools
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.times import format_time
from ledger_service.projections.replay import replay_account

commands = typer.Typer()


@commands.command("balance", epilog="Examples:\n\n"
                  "  ledgerctl balance 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11\n\n"
                  "  ledgerctl balance 3f0c1c9e-6a4d-4a55-9f1e-0b9f5a3c2d11"
                  " --as-of 2026-11-01T00:00:00Z"
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
        t = tools(ctx).of_account(account_id)
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
