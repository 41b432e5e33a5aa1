"""Shadow tables for a rebuild, and the swap that puts them live.

A rebuild fills ``<table>__rebuild`` while the live table keeps answering reads and keeps
being updated by the runner. The swap renames both in one transaction, so a reader sees the
old rows or the new ones, never a half-built table.

The shadow copies the live table's columns, defaults, constraints and indexes
(``LIKE ... INCLUDING ALL``), and then its row-level security, policies and grants, which
``LIKE`` leaves behind, read from the catalogue: the migration stays the one place that
defines them. After the swap the indexes get their old names back, so a table looks the
same after any number of rebuilds.

Indexes are left off the shadow while it fills and built once, sorted, before the swap: every
row inserted would otherwise update each of them, at a place of its own in each b-tree (the
statement's two indexes made up most of the server's time per row, measured). Unique indexes
and the constraints they back stay for projections that upsert, since ON CONFLICT needs them;
for those that only append, they are added back at the end too, and adding them checks that
no row came twice.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import Cursor
from psycopg.sql import SQL, Composed, Identifier

SHADOW_SUFFIX: Final = "__rebuild"
RETIRED_SUFFIX: Final = "__retired"
_POLICY_COMMANDS: Final = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


def shadow_name(table: str) -> str:
    return table + SHADOW_SUFFIX


def create_shadow(cur: Cursor[Any], table: str) -> str:
    """(Re)create the empty shadow of ``table``; returns its name."""
    shadow = shadow_name(table)
    cur.execute(SQL("DROP TABLE IF EXISTS {}").format(Identifier(shadow)))
    cur.execute(SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
        Identifier(shadow), Identifier(table)))
    copy_security(cur, table, shadow)
    return shadow


def defer_indexes(cur: Cursor[Any], shadow: str, *, unique_too: bool) -> list[SQL | Composed]:
    """Drop the shadow's indexes (the non-unique ones only, unless ``unique_too``) and the
    constraints they back; returns the statements that build them again, for
    ``build_indexes`` once the shadow is filled."""
    rows = cur.execute(
        "SELECT c.relname, i.indisunique, pg_get_indexdef(i.indexrelid), k.conname,"
        " pg_get_constraintdef(k.oid)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid"
        " WHERE i.indrelid = %s::regclass ORDER BY k.conname IS NULL, c.relname",
        (shadow,)).fetchall()
    builds: list[SQL | Composed] = []
    for index, unique, index_definition, constraint, constraint_definition in rows:
        if unique and not unique_too:
            continue
        # Both definitions come from the catalogue, not from input.
        if constraint is None:
            cur.execute(SQL("DROP INDEX {}").format(Identifier(index)))
            builds.append(SQL(index_definition))
        else:
            cur.execute(SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                Identifier(shadow), Identifier(constraint)))
            builds.append(SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                Identifier(shadow), Identifier(constraint), SQL(constraint_definition)))
    return builds


def build_indexes(cur: Cursor[Any], builds: list[SQL | Composed]) -> None:
    for build in builds:
        cur.execute(build)


def drop_shadow(cur: Cursor[Any], table: str) -> None:
    cur.execute(SQL("DROP TABLE IF EXISTS {}").format(Identifier(shadow_name(table))))


def copy_security(cur: Cursor[Any], source: str, target: str) -> None:
    """Row-level security, policies and grants of ``source``, applied to ``target``."""
    row = cur.execute(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
        (source,)).fetchone()
    assert row is not None
    enabled, forced = row
    if enabled:
        cur.execute(SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(Identifier(target)))
    if forced:
        cur.execute(SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(Identifier(target)))
    policies = cur.execute(
        "SELECT polname, polcmd, polpermissive, pg_get_expr(polqual, polrelid),"
        " pg_get_expr(polwithcheck, polrelid),"
        " ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END"
        "       FROM unnest(polroles) AS r)"
        " FROM pg_policy WHERE polrelid = %s::regclass", (source,)).fetchall()
    for name, command, permissive, using, check, roles in policies:
        statement = SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
            Identifier(name), Identifier(target),
            SQL("PERMISSIVE" if permissive else "RESTRICTIVE"),
            SQL(_POLICY_COMMANDS[command]),
            SQL(", ").join(SQL("PUBLIC") if r == "public" else Identifier(r) for r in roles))
        if using is not None:
            statement += SQL(" USING ({})").format(SQL(using))
        if check is not None:
            statement += SQL(" WITH CHECK ({})").format(SQL(check))
        cur.execute(statement)
    grants = cur.execute(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'public'"
        " ELSE pg_get_userbyid(a.grantee) END"
        " FROM pg_class c, aclexplode(c.relacl) AS a"
        " WHERE c.oid = %s::regclass AND a.grantee <> c.relowner", (source,)).fetchall()
    for privilege, grantee in grants:
        cur.execute(SQL("GRANT {} ON {} TO {}").format(
            SQL(privilege), Identifier(target),
            SQL("PUBLIC") if grantee == "public" else Identifier(grantee)))


def swap_in_shadow(cur: Cursor[Any], table: str) -> None:
    """Replace ``table`` by its shadow; the caller's transaction makes it atomic."""
    shadow = shadow_name(table)
    retired = table + RETIRED_SUFFIX
    old_names = _index_names(cur, table)
    cur.execute(SQL("DROP TABLE IF EXISTS {}").format(Identifier(retired)))
    cur.execute(SQL("ALTER TABLE {} RENAME TO {}").format(Identifier(table), Identifier(retired)))
    cur.execute(SQL("ALTER TABLE {} RENAME TO {}").format(Identifier(shadow), Identifier(table)))
    cur.execute(SQL("DROP TABLE {}").format(Identifier(retired)))
    for shape, name in _index_names(cur, table).items():
        wanted = old_names.get(shape)
        if wanted is not None and wanted != name:
            cur.execute(SQL("ALTER INDEX {} RENAME TO {}").format(Identifier(name),
                                                                  Identifier(wanted)))


def _index_names(cur: Cursor[Any], table: str) -> dict[tuple[bool, str], str]:
    """Index shape (unique?, definition after USING) -> index name."""
    rows = cur.execute(
        "SELECT c.relname, i.indisunique, pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = %s::regclass", (table,)).fetchall()
    return {(unique, definition.split(" USING ", 1)[1]): name
            for name, unique, definition in rows}

