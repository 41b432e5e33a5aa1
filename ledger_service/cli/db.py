"""`ledgerctl db`: the database roles the ledger runs as (docs/operations.md, least
privilege)."""

from __future__ import annotations

from typing import Annotated

import typer

from ledger_service.cli.tools import Failure, out, run, tools
from ledger_service.runtime_role import (
    RUNTIME_GROUP,
    TABLE_RIGHTS,
    RuntimeRoleError,
    grant_runtime_role,
)

commands = typer.Typer(
    help="The database roles of the ledger: the schema's owner migrates, a runtime role with"
         " only the rights the service uses runs it.",
    no_args_is_help=True,
)


@commands.command("grant-runtime-role", epilog="Example (as the schema's owner):\n\n"
                  "  psql -c \"CREATE ROLE ledger_app LOGIN PASSWORD '...'\"\n\n"
                  "  DATABASE_URL=postgresql://owner@db/billing ledgerctl db"
                  " grant-runtime-role ledger_app\n\n"
                  "  then run the service with DATABASE_URL=postgresql://ledger_app@db/billing")
def grant_runtime_role_command(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="An existing login role, neither superuser nor"
                                             " owner of the schema")],
) -> None:
    """Let ROLE run the ledger service with only the rights it uses: membership of the group
    role ledger_runtime (which every `migrate` keeps at SELECT and INSERT on the event log,
    no UPDATE, DELETE or TRUNCATE, and what the projections, positions, keys and anchors
    need), and none of its own on the schema. Run it as the schema's owner, after
    `python -m ledger_service migrate`."""

    def command() -> None:
        with tools(ctx).connect() as conn:
            try:
                done = grant_runtime_role(conn, role)
            except RuntimeRoleError as exc:
                raise Failure(str(exc)) from None
        for statement in done:
            out.print(statement)
        log_rights = ", ".join(TABLE_RIGHTS["ledger_events"])
        out.print(f"{role} runs as a member of {RUNTIME_GROUP}: {log_rights} on the event log,"
                  " no DDL. Point the service's DATABASE_URL at it; keep the owner's for"
                  " `migrate` and `ledgerctl rebuild`.")

    run(command, ctx)
