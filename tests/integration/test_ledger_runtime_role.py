"""The ledger runs as a least-privilege database role: the schema's owner migrates, a login
role made a member of ledger_runtime (`ledgerctl db grant-runtime-role`) runs the service,
appends to the log and keeps the projections, and is refused any change to a stored event
with "permission denied", whatever the append-only trigger does; it can neither switch the
trigger off nor make tables."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from contracts.ledger import AuthorizeRequest
from ledger_service.anchors import make_anchor
from ledger_service.app import intake
from ledger_service.cli import app as ledgerctl
from ledger_service.runtime_role import (
    RUNTIME_GROUP,
    TABLE_RIGHTS,
    RuntimeRoleError,
    sync_runtime_rights,
    table_rights_of,
)
from ledger_service.settings import DEVELOPMENT_ANCHOR_SIGNING_KEY, parse_seed
from services.database import MigrationError, apply_migrations, conninfo
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    build,
    runner_for,
    scratch_database,
)

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).parents[2] / "ledger_service" / "migrations"
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="role-test",
                                                    scopes=["operator"])}


@dataclass(frozen=True)
class Database:
    owner_url: str  # the schema's owner (here a superuser, as on a development machine)
    runtime_url: str  # the same database as the runtime role
    role: str

    def connect(self, url: str, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo(url, options="-c search_path=ledger"), **kw)


def as_role(url: str, role: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(conninfo(url))
    return f"postgresql://{role}@{parts['host']}:{parts['port']}/{parts['dbname']}"


@pytest.fixture(scope="module")
def database(infra: Infra) -> Iterator[Database]:
    role = f"ledger_app_{uuid.uuid4().hex[:8]}"
    with scratch_database(infra, "role") as owner_url:
        migrated = subprocess.run([sys.executable, "-m", "ledger_service", "migrate"],
                                  env={**infra.service_env(), "DATABASE_URL": owner_url},
                                  capture_output=True, text=True, timeout=120)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            granted = CliRunner().invoke(ledgerctl, ["db", "grant-runtime-role", role],
                                         env={"DATABASE_URL": owner_url, "COLUMNS": "200"})
            assert granted.exit_code == 0, granted.output
            assert f"GRANT {RUNTIME_GROUP} TO {role}" in granted.output.replace('"', "")
            yield Database(owner_url, as_role(owner_url, role), role)
        finally:
            with psycopg.connect(owner_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(conninfo(infra.database_url, dbname="postgres"),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# ------------------------------------------------------------------ the log refuses change


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_events SET topic = topic",
    "DELETE FROM ledger_events",
    "TRUNCATE ledger_events",
    "UPDATE ledger_snapshots SET topic = topic",
    "DELETE FROM ledger_snapshots",
    "DELETE FROM entry_index",
    "UPDATE idempotency_keys SET key = key",
])
def test_the_runtime_role_is_refused_any_change_of_history_by_its_rights(
        database: Database, statement: str) -> None:
    """Refused by the role's rights, not the trigger: with the trigger switched off (as only
    the owner or a superuser can), the runtime role is refused all the same."""
    with database.connect(database.owner_url, autocommit=True) as owner:
        owner.execute("ALTER TABLE ledger_events DISABLE TRIGGER USER")
    try:
        with database.connect(database.runtime_url, autocommit=True) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="permission denied for table"):
            conn.execute(statement)
    finally:
        with database.connect(database.owner_url, autocommit=True) as owner:
            owner.execute("ALTER TABLE ledger_events ENABLE TRIGGER USER")


def test_the_runtime_role_appends_to_the_log(database: Database) -> None:
    with database.connect(database.runtime_url) as conn, conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO ledger_events (originator_id, originator_version, topic,"
                     " state) VALUES (%s, 1, 'test', '{}')", (uuid.uuid4(),))
        assert conn.execute("SELECT currval(pg_get_serial_sequence('ledger.ledger_events',"
                            " 'notification_id'))").fetchone()


@pytest.mark.parametrize(("statement", "refusal"), [
    ("ALTER TABLE ledger_events DISABLE TRIGGER USER", psycopg.errors.InsufficientPrivilege),
    ("SET session_replication_role = replica", psycopg.errors.InsufficientPrivilege),
    ("CREATE TABLE ledger.sneaky (id int)", psycopg.errors.InsufficientPrivilege),
    ("DROP TABLE ledger_events", psycopg.errors.InsufficientPrivilege),
])
def test_the_runtime_role_can_neither_switch_the_trigger_off_nor_change_the_schema(
        database: Database, statement: str, refusal: type[Exception]) -> None:
    with database.connect(database.runtime_url, autocommit=True) as conn, pytest.raises(refusal):
        conn.execute(statement)


def test_the_group_role_holds_exactly_the_declared_rights(database: Database) -> None:
    with database.connect(database.owner_url) as conn:
        held = table_rights_of(conn, "ledger", RUNTIME_GROUP)
        own = table_rights_of(conn, "ledger", database.role)
    assert held == {t: tuple(sorted(r)) for t, r in TABLE_RIGHTS.items()}
    assert held["ledger_events"] == ("INSERT", "SELECT")
    assert own == {}  # everything through the group, nothing of its own


# ------------------------------------------------------------------ the ledger works as it


def test_the_ledger_application_and_its_followers_run_as_the_runtime_role(
        database: Database) -> None:
    clock = Clock()
    ledger = build(database.runtime_url, clock)  # no DDL: the tables are the owner's
    try:
        workload = Workload(ledger, clock)
        workload.every_kind()
        for index in range(len(workload.accounts)):
            workload.use(index, 2)
        funded = workload.open("prepay")  # the workload's own accounts may be spent
        workload.grant(len(workload.accounts) - 1, "purchased", "10.00")
        reply = intake.authorize(ledger, [AuthorizeRequest(
            request_id=f"r-{uuid.uuid4()}", account_id=funded, product="sms",
            quantity=1)])[0]
        assert reply.approved, reply
        runner = runner_for(ledger, database.runtime_url)
        try:
            assert runner.catch_up() > 0
        finally:
            runner.close()
        with database.connect(database.runtime_url, autocommit=True) as conn:
            assert make_anchor(conn, parse_seed(DEVELOPMENT_ANCHOR_SIGNING_KEY),
                               reason="manual") is not None
    finally:
        ledger.app.close()
    verified = CliRunner().invoke(ledgerctl, ["verify", "--json"], env={
        "DATABASE_URL": database.runtime_url, "ANCHOR_DIR": "/nonexistent", "COLUMNS": "200"})
    report = json.loads(verified.stdout)
    # Lag aside (the workload's clock is in the past), the log and projections agree.
    assert report["ok"] and report["anchors_checked"] >= 1, verified.output


def test_the_service_serves_as_the_runtime_role(
        database: Database, infra: Infra, tmp_path: Path) -> None:
    service = ServiceProcess("ledger_service", infra.service_env(
        DATABASE_URL=database.runtime_url)).start(tmp_path)
    try:
        service.wait_ready()
        account = str(uuid.uuid4())
        opened = httpx.post(f"{service.url}/v1/accounts", headers=OPERATOR, json={
            "account_id": account, "type": "prepay", "currency": "GBP",
            "tax": {"country": "GB"}})
        assert opened.status_code == 201, opened.text
        credited = httpx.post(f"{service.url}/v1/accounts/{account}/credits", headers=OPERATOR,
                              json={"kind": "purchased", "amount": "5.00", "reason": "test"})
        assert credited.status_code == 201, credited.text
        reply = asyncio.run(_authorize(infra.nats_url, account))
        assert reply["approved"] is True, reply
        # The projections (the follower process) and the statement read (as ledger_reader).
        _eventually(lambda: httpx.get(f"{service.url}/v1/health/lag").status_code == 200
                    and all(f["behind_events"] == 0 for f in httpx.get(
                        f"{service.url}/v1/health/lag").json()["followers"]))
        entries = httpx.get(f"{service.url}/v1/accounts/{account}/entries", headers=OPERATOR)
        assert entries.status_code == 200, entries.text
        assert [e["kind"] for e in entries.json()["items"]] == ["grant"]
        balance = httpx.get(f"{service.url}/v1/accounts/{account}/balance", headers=OPERATOR)
        assert balance.json()["held"] == "0.0395", balance.text
    finally:
        assert service.stop() == 0, service.logs()
    assert not re.search("permission denied", service.logs(), re.IGNORECASE), service.logs()


async def _authorize(nats_url: str, account: str) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.request("ledger.v1.authorize", json.dumps({
            "request_id": f"r-{uuid.uuid4()}", "account_id": account, "product": "sms",
            "quantity": 1}).encode(), timeout=10)
        return json.loads(msg.data)  # type: ignore[no-any-return]
    finally:
        await nc.close()


def _eventually(check: Any, timeout_s: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.2)


# ------------------------------------------------------------------ migrations stay the owner's


def test_a_role_that_may_not_migrate_refuses_to_run_with_a_migration_pending(
        database: Database, tmp_path: Path) -> None:
    for path in MIGRATIONS.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    assert apply_migrations(database.runtime_url, "ledger", tmp_path) == []  # all applied
    (tmp_path / "9999_new.sql").write_text("CREATE TABLE later (id int);\n")
    with pytest.raises(MigrationError, match=r"9999_new\.sql.*as the schema's owner"):
        apply_migrations(database.runtime_url, "ledger", tmp_path)


def test_a_new_table_without_decided_rights_stops_the_owner_s_migrate(
        database: Database) -> None:
    with database.connect(database.owner_url) as conn, conn.transaction(force_rollback=True):
        conn.execute("CREATE TABLE ledger.undecided (id int)")
        with pytest.raises(RuntimeRoleError, match="undecided"):
            sync_runtime_rights(conn)


@pytest.mark.parametrize("who", ["postgres", "owner"])
def test_a_superuser_or_the_owner_is_not_made_a_runtime_role(
        database: Database, who: str) -> None:
    role = "postgres" if who == "postgres" else psycopg.conninfo.conninfo_to_dict(
        conninfo(database.owner_url)).get("user", "postgres")
    result = CliRunner().invoke(ledgerctl, ["db", "grant-runtime-role", str(role)],
                                env={"DATABASE_URL": database.owner_url, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "must hold less than that" in result.output


def test_ledger_processes_starting_together_on_a_new_database_all_migrate(infra: Infra) -> None:
    """`make run LEDGER_PROCESSES=N` starts N processes at once: the event store's tables are
    made under the migrations' lock, not raced for (a unique violation in pg_type)."""
    import threading

    from ledger_service.main import SPEC
    from services.runtime import load, migrate
    from tests.integration.own_database import own_database

    with own_database(infra, "together") as fresh:
        settings = load(SPEC, {"DATABASE_URL": fresh.database_url, "NATS_URL": fresh.nats_url})
        barrier = threading.Barrier(4)
        failures: list[BaseException] = []

        def start() -> None:
            barrier.wait()
            try:
                migrate(SPEC, settings)
            except BaseException as exc:  # collected for the assertion
                failures.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
