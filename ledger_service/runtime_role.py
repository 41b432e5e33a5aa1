"""The ledger's runtime database role: only the rights the service uses.

The schema's owner (the role `python -m ledger_service migrate` runs as) makes and changes
the tables. The service (its HTTP and NATS process, its follower process) can run as another
role that holds only what its queries need: on the log, SELECT and INSERT, so UPDATE, DELETE
and TRUNCATE of a stored event are refused with "permission denied" before the append-only
trigger is even reached, and the role can neither disable that trigger (it does not own the
table) nor set session_replication_role (not a superuser). Editing history then takes the
owner's or a superuser's credentials: a deliberate act, which the keyed chain and the signed
anchors expose (docs/design.md, tamper evidence).

The rights belong to a group role, `ledger_runtime` (migration 0005 makes it, with the
row-level security policies that let it write the projections); every `migrate` keeps its
table rights equal to `TABLE_RIGHTS` (`sync_runtime_rights`), so a migration's new table gets
its rights where it is made. A table the map does not name stops `migrate`: whoever adds a
table decides here what the service may do to it. `ledgerctl db grant-runtime-role ROLE`
makes a login role a member, after checking it is no superuser and no owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg.sql import SQL, Composed, Identifier

from ledger_service.projections.reads import READER_ROLE
from ledger_service.projections.tables import SHADOW_SUFFIX
from services.database import may_create_in

RUNTIME_GROUP: Final = "ledger_runtime"
_READ_WRITE: Final = ("SELECT", "INSERT", "UPDATE", "DELETE")

# What the service's queries do to each table of the ledger schema, and no more.
TABLE_RIGHTS: Final[Mapping[str, tuple[str, ...]]] = {
    # The event store: appended to and read, never changed.
    "ledger_events": ("SELECT", "INSERT"),
    "ledger_snapshots": ("SELECT", "INSERT"),
    # Written in the events' transaction: an idempotency key or an entry is never changed.
    "idempotency_keys": ("SELECT", "INSERT"),
    "entry_index": ("SELECT", "INSERT"),
    "expiry_schedule": ("SELECT", "INSERT", "DELETE"),
    # The followers: positions move, projection rows are rewritten.
    "publisher_position": ("SELECT", "INSERT", "UPDATE"),
    "projection_positions": ("SELECT", "INSERT", "UPDATE"),
    "projection_quarantine": ("SELECT", "INSERT", "UPDATE"),
    "balances": _READ_WRITE,
    "statement_entries": _READ_WRITE,
    "usage_daily": _READ_WRITE,
    "open_holds": _READ_WRITE,
    # Anchors are published after they are stored (published_at), and their heads move on.
    # UPDATE also lets the anchorer take its EXCLUSIVE lock on anchors (PostgreSQL's rule).
    "anchors": ("SELECT", "INSERT", "UPDATE"),
    "anchor_heads": ("SELECT", "INSERT", "UPDATE"),
    # Partition ownership: leases taken, renewed and released; members join and expire.
    "partition_leases": _READ_WRITE,
    "partition_members": _READ_WRITE,
    # Read at start: a role that may not migrate checks that the owner did.
    "schema_migrations": ("SELECT",),
}


class RuntimeRoleError(Exception):
    """The role cannot be made a runtime role as asked; the message says why."""


def schema_tables(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The schema's tables, a rebuild's shadow tables left out (they take the live table's
    grants when swapped in: projections/tables.py copy_security)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        (schema,)).fetchall()
    return [name for (name,) in rows if not name.endswith(SHADOW_SUFFIX)]


def table_rights_of(conn: psycopg.Connection[Any], schema: str,
                    role: str) -> dict[str, tuple[str, ...]]:
    """The rights ``role`` holds itself (not through its groups) on each table of ``schema``."""
    rows = conn.execute(
        "SELECT c.relname, a.privilege_type FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) AS a"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.grantee = %s::regrole",
        (schema, role)).fetchall()
    held: dict[str, list[str]] = {}
    for table, right in rows:
        held.setdefault(table, []).append(right)
    return {table: tuple(sorted(rights)) for table, rights in held.items()}


def _expected(tables: list[str]) -> dict[str, tuple[str, ...]]:
    undecided = sorted(set(tables) - set(TABLE_RIGHTS))
    if undecided:
        raise RuntimeRoleError(
            f"tables with no runtime rights decided: {', '.join(undecided)}; add them to"
            " ledger_service/runtime_role.py TABLE_RIGHTS")
    return {t: tuple(sorted(TABLE_RIGHTS[t])) for t in tables}


def sync_runtime_rights(conn: psycopg.Connection[Any], schema: str = "ledger") -> bool:
    """As the schema's owner, after the migrations: give the group role exactly
    `TABLE_RIGHTS` (nothing is done when it holds them already, nor by a role that may not
    change the schema). True when rights were changed."""
    with conn.transaction():
        if not may_create_in(conn, schema):
            return False
        tables = schema_tables(conn, schema)
        expected = _expected(tables)
        if table_rights_of(conn, schema, RUNTIME_GROUP) == expected and _has_the_rest(
                conn, schema):
            return False
        group, where = Identifier(RUNTIME_GROUP), Identifier(schema)
        statements: list[Composed] = [
            SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(where, group),
            SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(where, group),
            SQL("GRANT USAGE ON SCHEMA {} TO {}").format(where, group),
            # nextval for new events, currval for their ids
            SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(where, group),
            # Portal reads switch to the reader role for their transaction (reads.py).
            SQL("GRANT {} TO {}").format(Identifier(READER_ROLE), group),
        ]
        for table, rights in expected.items():
            statements.append(SQL("GRANT {} ON {}.{} TO {}").format(
                SQL(", ").join(SQL(right) for right in rights), where, Identifier(table), group))
        for statement in statements:
            conn.execute(statement)
    return True


def _has_the_rest(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT has_schema_privilege(%(g)s, %(s)s, 'USAGE') AND pg_has_role(%(g)s, %(r)s,"
        " 'MEMBER') AND NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %(s)s"
        # CASE: the privilege is asked of sequences only, whatever order the planner picks
        " AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(%(g)s, c.oid, 'USAGE')"
        " ELSE false END)",
        {"g": RUNTIME_GROUP, "s": schema, "r": READER_ROLE}).fetchone()
    return bool(row and row[0])


def _check_role(conn: psycopg.Connection[Any], schema: str, role: str) -> None:
    row = conn.execute(
        "SELECT r.rolsuper, r.rolbypassrls, pg_has_role(r.oid, n.nspowner, 'MEMBER')"
        " FROM pg_roles r, pg_namespace n WHERE r.rolname = %s AND n.nspname = %s",
        (role, schema)).fetchone()
    if row is None:
        raise RuntimeRoleError(f"no role {role!r} (or no schema {schema!r}): create the role"
                               " first (CREATE ROLE ... LOGIN PASSWORD ...), and migrate")
    superuser, bypass_rls, owner = row
    if superuser or bypass_rls or owner:
        why = ("a superuser" if superuser else "allowed to bypass row-level security"
               if bypass_rls else f"the owner of schema {schema} (or a member of its owner)")
        raise RuntimeRoleError(f"{role} is {why}: a runtime role must hold less than that")


def grant_runtime_role(conn: psycopg.Connection[Any], role: str,
                       schema: str = "ledger") -> list[str]:
    """Make ``role`` a member of the group role and nothing more on ``schema`` (its own
    rights there, if it had any, are revoked). Returns the statements run, as text."""
    with conn.transaction():
        _check_role(conn, schema, role)
        expected = _expected(schema_tables(conn, schema))
        missing = sorted(set(TABLE_RIGHTS) - set(expected))
        if missing or table_rights_of(conn, schema, RUNTIME_GROUP) != expected:
            raise RuntimeRoleError(
                f"the group role {RUNTIME_GROUP} does not hold the runtime rights on schema"
                f" {schema}{' (no tables ' + ', '.join(missing) + ')' if missing else ''}: run"
                " `python -m ledger_service migrate` as the schema's owner first")
        who, where = Identifier(role), Identifier(schema)
        statements = [
            SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(where, who),
            SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(where, who),
            SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(where, who),
            SQL("GRANT {} TO {}").format(Identifier(RUNTIME_GROUP), who),
        ]
        for statement in statements:
            conn.execute(statement)
        return [statement.as_string(conn) for statement in statements]
