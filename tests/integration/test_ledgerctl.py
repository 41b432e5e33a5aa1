"""ledgerctl against real PostgreSQL: balances replayed from the log, verify catching a
tampered event, a deleted event, a corrupted projection row and a tampered snapshot (exit 1,
readable report), raw events and exports with positions and hashes, rebuild, catch-up and
status.

Tests that tamper get a database of their own, so the rest of the suite never sees it.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from typer.testing import CliRunner

from contracts.money import format_micros
from ledger_service.app.ledger import SNAPSHOT_INTERVAL
from ledger_service.cli import app
from services.database import conninfo
from tests.conftest import Infra
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    build,
    runner_for,
    scratch_database,
)

pytestmark = pytest.mark.integration
cli = CliRunner()


@dataclass
class Scratch:
    database_url: str
    workload: Workload
    anchor_dir: str = "/nonexistent/anchors"  # never a `make run` stack's archive

    def ledgerctl(self, *args: str) -> Any:
        return cli.invoke(app, list(args), env={"DATABASE_URL": self.database_url,
                                                "ANCHOR_DIR": self.anchor_dir, "COLUMNS": "200"})

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # The attacker of these tests is a superuser who sidesteps the log's append-only
        # trigger (session_replication_role = replica): what verify must still catch.
        options = "-c search_path=ledger -c session_replication_role=replica"
        with psycopg.connect(conninfo(self.database_url, options=options),
                             autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def scratch(infra: Infra) -> Iterator[Scratch]:
    with scratch_database(infra, "ctl") as database_url:
        clock = Clock()
        ledger = build(database_url, clock)
        try:
            workload = Workload(ledger, clock)
            workload.every_kind()
            for index in range(len(workload.accounts)):
                workload.use(index, 2)
            runner = runner_for(ledger, database_url)
            runner.catch_up()
            runner.close()
            yield Scratch(database_url, workload)
        finally:
            ledger.app.close()


def prepay(scratch: Scratch) -> UUID:
    return scratch.workload.accounts[1]  # the account of every_kind with the most history


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("command", [
    [], ["balance"], ["verify"], ["rebuild"], ["catch-up"], ["status"], ["events"], ["export"],
    ["dead-letters"], ["dead-letters", "list"], ["dead-letters", "show"],
    ["dead-letters", "retry"], ["anchor"], ["db"], ["db", "grant-runtime-role"],
])
def test_every_command_has_help_with_examples(command: list[str]) -> None:
    result = cli.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage: ledgerctl" in result.output
    if command and command not in (["dead-letters"], ["db"]):
        assert "Example" in result.output, command


# ------------------------------------------------------------------ verify


def test_verify_passes_on_an_honest_log(scratch: Scratch) -> None:
    result = scratch.ledgerctl("verify")
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "Sum of all postings: GBP 0.00" in result.output
    report = json.loads(scratch.ledgerctl("verify", "--json").stdout)
    assert report["ok"] and report["accounts"] == 3 and report["divergences"] == []


def test_verify_finds_an_event_altered_by_hand(scratch: Scratch) -> None:
    account = prepay(scratch)
    version = scratch.sql(
        "SELECT originator_version FROM ledger_events WHERE originator_id = %s"
        " AND topic LIKE '%%UsageRecorded' ORDER BY originator_version LIMIT 1", (account,))[0][0]
    scratch.sql(
        "UPDATE ledger.ledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
        " '\"quantity\":3', '\"quantity\":1'), 'UTF8')"
        " WHERE originator_id = %s AND originator_version = %s", (account, version))
    result = scratch.ledgerctl("verify")
    assert result.exit_code == 1, result.output
    assert f"Account {account}" in result.output
    assert "chain" in result.output and f"version {version}" in result.output
    assert "DIVERGENT" in result.output
    scoped = scratch.ledgerctl("verify", "--account", str(scratch.workload.accounts[2]))
    assert scoped.exit_code == 0, scoped.output  # the other accounts are intact


def test_verify_finds_a_deleted_event_in_the_middle_and_at_the_end(scratch: Scratch) -> None:
    middle, last = scratch.workload.accounts[1], scratch.workload.accounts[2]
    scratch.sql("DELETE FROM ledger_events WHERE originator_id = %s AND originator_version = 3",
                (middle,))
    scratch.sql("DELETE FROM ledger_events WHERE originator_id = %s AND originator_version ="
                " (SELECT max(originator_version) FROM ledger_events WHERE originator_id = %s)",
                (last, last))
    result = scratch.ledgerctl("verify", "--json")
    assert result.exit_code == 1, result.output
    found = {(d["account_id"], d["check"]) for d in json.loads(result.stdout)["divergences"]}
    assert (str(middle), "version_gap") in found and (str(middle), "chain") in found
    # A missing last event leaves no gap: the projections and the entry index still know it.
    assert (str(last), "projection:balances") in found or (str(last), "entry_index") in found


def test_verify_finds_a_corrupted_projection_row(scratch: Scratch) -> None:
    account = prepay(scratch)
    scratch.sql("UPDATE balances SET available_micros = available_micros + 1"
                " WHERE account_id = %s", (account,))
    scratch.sql("UPDATE statement_entries SET amount_micros = amount_micros - 1"
                " WHERE account_id = %s AND entry_seq = (SELECT max(entry_seq)"
                " FROM statement_entries WHERE account_id = %s)", (account, account))
    scratch.sql("DELETE FROM usage_daily WHERE account_id = %s", (account,))
    result = scratch.ledgerctl("verify", "--account", str(account))
    assert result.exit_code == 1, result.output
    for check in ("projection:balances", "projection:statement", "projection:usage"):
        assert check in result.output, check
    assert "available_micros" in result.output
    # the log itself is intact: the chain and the postings are not blamed
    assert "  chain" not in result.output and "  postings" not in result.output
    rebuilt = scratch.ledgerctl("rebuild", "all")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert scratch.ledgerctl("verify").exit_code == 0


def test_verify_checks_the_snapshots_loads_start_from(scratch: Scratch) -> None:
    account = prepay(scratch)
    for _ in range(SNAPSHOT_INTERVAL):  # one event each: the account passes a multiple
        scratch.workload.use(1, 1)
    runner = runner_for(scratch.workload.ledger, scratch.database_url)
    runner.catch_up()
    runner.close()
    snapshots = scratch.sql("SELECT originator_version FROM ledger_snapshots"
                            " WHERE originator_id = %s", (account,))
    assert snapshots, "the account should have a snapshot by now"
    assert scratch.ledgerctl("verify").exit_code == 0  # an honest snapshot is no divergence
    version = snapshots[-1][0]
    scratch.sql(  # a balance a load would start from, not the one the events give
        "UPDATE ledger_snapshots SET state = convert_to(regexp_replace(convert_from(state,"
        " 'UTF8'), '\"_balance_micros\":-?[0-9]+', '\"_balance_micros\":123456789'), 'UTF8')"
        " WHERE originator_id = %s AND originator_version = %s", (account, version))
    scratch.sql(  # and one of events the log does not have
        "INSERT INTO ledger_snapshots (originator_id, originator_version, topic, state)"
        " SELECT originator_id, originator_version + 1000, topic, state FROM ledger_snapshots"
        " WHERE originator_id = %s AND originator_version = %s", (account, version))
    result = scratch.ledgerctl("verify", "--json")
    assert result.exit_code == 1, result.output
    found = [(d["where"], d["expected"]) for d in json.loads(result.stdout)["divergences"]
             if d["check"] == "snapshot" and d["account_id"] == str(account)]
    assert (f"snapshot at version {version}",
            "the replayed state (_balance_micros)") in found, found
    assert any(where == f"snapshot at version {version + 1000}" for where, _ in found), found


def test_verify_without_a_database_is_a_readable_error() -> None:
    result = cli.invoke(app, ["verify"], env={"DATABASE_URL": "", "RUN_DIR": "/nonexistent"})
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output
    unreachable = cli.invoke(app, ["--database-url", "postgresql://nobody@127.0.0.1:1/x",
                                   "verify"])
    assert unreachable.exit_code == 2 and "cannot connect" in unreachable.output


# ------------------------------------------------------------------ balance, events, export


def test_balance_replays_the_log_now_and_as_of_an_instant(scratch: Scratch) -> None:
    account = prepay(scratch)
    now = json.loads(scratch.ledgerctl("balance", str(account), "--json").stdout)
    stored = scratch.sql("SELECT balance_micros, version FROM balances WHERE account_id = %s",
                         (account,))[0]
    assert now["version"] == stored[1] and now["events_replayed"] == stored[1]
    assert now["balance"] == format_micros(stored[0])
    events = [json.loads(line) for line in
              scratch.ledgerctl("events", str(account), "--json").stdout.splitlines()]
    third = events[2]["recorded_at"]
    then = json.loads(scratch.ledgerctl("balance", str(account), "--as-of", third,
                                        "--json").stdout)
    assert then["events_replayed"] == 3 and then["version"] == 3
    assert then["as_of"] == third
    table = scratch.ledgerctl("balance", str(account))
    assert table.exit_code == 0 and "Replayed" in table.output and "available" in table.output
    before = scratch.ledgerctl("balance", str(account), "--as-of", "2000-01-01T00:00:00Z")
    assert before.exit_code == 2 and "no events" in before.output
    naive = scratch.ledgerctl("balance", str(account), "--as-of", "2026-03-01T10:00:00")
    assert naive.exit_code == 2 and "UTC offset" in naive.output


def test_events_and_exports_carry_positions_and_a_continuous_hash_chain(
        scratch: Scratch, tmp_path: Any) -> None:
    account = prepay(scratch)
    listed = scratch.ledgerctl("events", str(account))
    assert listed.exit_code == 0 and "UsageRecorded" in listed.output
    target = tmp_path / "account.jsonl"
    exported = scratch.ledgerctl("export", "--account", str(account), "--format", "jsonl",
                                 "--output", str(target))
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["version"] for r in records] == list(range(1, len(records) + 1))
    assert records[0]["previous_hash"] == "0" * 64
    assert all(b["previous_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    assert all(a["position"] < b["position"] for a, b in itertools.pairwise(records))
    window = scratch.ledgerctl("export", "--format", "csv", "--from", records[2]["recorded_at"],
                               "--to", records[5]["recorded_at"])
    assert window.exit_code == 0, window.output
    rows = list(csv.DictReader(io.StringIO(window.stdout)))
    assert rows and all(records[2]["recorded_at"] <= r["recorded_at"] < records[5]["recorded_at"]
                        for r in rows)
    assert {r["account_id"] for r in rows} >= {str(account)}
    whole_log = scratch.ledgerctl("export", "--format", "jsonl")
    lines = whole_log.stdout.splitlines()
    assert len(lines) == scratch.sql("SELECT count(*) FROM ledger_events")[0][0]
    assert scratch.ledgerctl("export", "--format", "xml").exit_code == 2


# ------------------------------------------------------------------ projections


def test_rebuild_catch_up_and_status(scratch: Scratch) -> None:
    rebuilt = scratch.ledgerctl("rebuild", "statement")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "Rebuilt statement" in rebuilt.output and "events/s" in rebuilt.output
    assert scratch.ledgerctl("rebuild", "ledgers").exit_code == 2
    scratch.workload.use(1, 3)
    status = scratch.ledgerctl("status")
    assert status.exit_code == 0 and "behind" in status.output
    caught = scratch.ledgerctl("catch-up")
    assert caught.exit_code == 0 and "Applied 1 events" in caught.output
    positions = {p for (p,) in scratch.sql("SELECT position FROM projection_positions")}
    assert positions == {scratch.sql("SELECT max(notification_id) FROM ledger_events")[0][0]}
    assert scratch.ledgerctl("verify").exit_code == 0
