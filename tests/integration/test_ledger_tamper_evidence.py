"""Tamper evidence against someone with database access: the log refuses change, and what a
superuser does anyway (delete an account's newest events and tidy the side tables, restore an
older copy, rewrite hashes without the key) is caught by `ledgerctl verify` through the keyed
chain and the signed anchors kept outside the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from typer.testing import CliRunner

from contracts.ledger import LedgerAnchor
from ledger_service.anchors import append_to_file, make_anchor, read_anchor_file
from ledger_service.cli import app
from ledger_service.settings import DEVELOPMENT_ANCHOR_SIGNING_KEY, parse_seed
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
SEED = parse_seed(DEVELOPMENT_ANCHOR_SIGNING_KEY)


class Log:
    def __init__(self, database_url: str, workload: Workload, anchor_dir: Path) -> None:
        self.database_url = database_url
        self.workload = workload
        self.anchor_dir = anchor_dir

    def connect(self, *, superuser_bypass: bool = False) -> psycopg.Connection[Any]:
        options = "-c search_path=ledger"
        if superuser_bypass:
            options += " -c session_replication_role=replica"
        return psycopg.connect(conninfo(self.database_url, options=options), autocommit=True)

    def anchor(self) -> LedgerAnchor:
        with self.connect() as conn:
            made = make_anchor(conn, SEED, reason="manual")
        assert made is not None
        append_to_file(self.anchor_dir, made)
        return made

    def verify(self, *args: str) -> Any:
        # The workload's clock is in the past: projections behind by "days" would exit 3.
        cli.invoke(app, ["catch-up"], env={"DATABASE_URL": self.database_url})
        return cli.invoke(app, ["verify", "--json", *args],
                          env={"DATABASE_URL": self.database_url, "COLUMNS": "200",
                               "ANCHOR_DIR": str(self.anchor_dir)})

    def checks(self, *args: str) -> set[str]:
        result = self.verify(*args)
        return {d["check"] for d in json.loads(result.stdout)["divergences"]}


@pytest.fixture
def log(infra: Infra, tmp_path: Path) -> Iterator[Log]:
    with scratch_database(infra, "tamper") as database_url:
        clock = Clock()
        ledger = build(database_url, clock)
        try:
            workload = Workload(ledger, clock)
            workload.every_kind()
            for index in range(len(workload.accounts)):
                workload.use(index, 3)
            runner = runner_for(ledger, database_url)
            runner.catch_up()
            runner.close()
            yield Log(database_url, workload, tmp_path / "anchors")
        finally:
            ledger.app.close()


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_events SET topic = topic",
    "DELETE FROM ledger_events WHERE originator_version = 1",
    "TRUNCATE ledger_events",
])
def test_the_stored_events_refuse_change(log: Log, statement: str) -> None:
    with log.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                               match="append-only"):
        conn.execute(statement)
    with log.connect() as conn:
        assert conn.execute("SELECT count(*) FROM ledger_events").fetchone()[0] > 0


def test_an_honest_log_agrees_with_its_anchors(log: Log) -> None:
    first = log.anchor()
    log.workload.use(1, 2)
    second = log.anchor()
    assert second.position > first.position
    assert [a.anchor_id for a in read_anchor_file(log.anchor_dir / "anchors.jsonl")] == [
        first.anchor_id, second.anchor_id]
    result = log.verify()
    assert result.exit_code == 0, result.output
    assert "Checked 2 anchors" in result.output


def test_deleting_an_accounts_newest_events_and_tidying_up_is_caught_by_the_anchor(
        log: Log) -> None:
    account = log.workload.accounts[1]
    log.anchor()
    with log.connect(superuser_bypass=True) as conn:
        newest = conn.execute("SELECT max(originator_version) FROM ledger_events"
                              " WHERE originator_id = %s", (account,)).fetchone()[0]
        # Everything that knew of the last event goes too: no gap, no orphan index row.
        conn.execute("DELETE FROM ledger_events WHERE originator_id = %s"
                     " AND originator_version = %s", (account, newest))
        conn.execute("DELETE FROM entry_index WHERE account_id = %s AND originator_version = %s",
                     (account, newest))
        conn.execute("DELETE FROM ledger_snapshots WHERE originator_id = %s", (account,))
    # The chain alone cannot see this; the anchor signed outside the database does.
    assert "anchor" in log.checks()
    assert log.verify().exit_code == 1


def test_restoring_an_older_copy_of_the_log_is_caught(log: Log) -> None:
    log.workload.use(0, 2)
    anchored = log.anchor()
    with log.connect(superuser_bypass=True) as conn:
        conn.execute("DELETE FROM ledger_events WHERE notification_id > %s",
                     (anchored.position - 3,))
    result = log.verify()
    assert result.exit_code == 1
    problems = [d["found"] for d in json.loads(result.stdout)["divergences"]
                if d["check"] == "anchor"]
    assert any("truncated" in p for p in problems), problems


def test_rewriting_hashes_without_the_key_is_caught(log: Log) -> None:
    """An attacker edits an amount and recomputes every later hash as plain SHA-256 (the
    algorithm is public; the key is not)."""
    from ledger_service.domain.chain import chain_keyring, configure_chain_keys

    account = log.workload.accounts[2]
    saved = chain_keyring()
    configure_chain_keys(None)
    try:
        with log.connect(superuser_bypass=True) as conn:
            rows = conn.execute("SELECT originator_version, state FROM ledger_events"
                                " WHERE originator_id = %s ORDER BY originator_version",
                                (account,)).fetchall()
            previous = "0" * 64
            for version, state in rows:
                payload = msgspec.json.decode(bytes(state))
                rehashed = _unkeyed_rehash(payload, version, previous)
                payload["chain_hash"] = rehashed
                previous = rehashed
                conn.execute("UPDATE ledger_events SET state = %s WHERE originator_id = %s"
                             " AND originator_version = %s",
                             (msgspec.json.encode(payload), account, version))
    finally:
        configure_chain_keys(saved)
    assert "unkeyed" in log.checks()


def _unkeyed_rehash(payload: dict[str, Any], version: int, previous: str) -> str:
    import hashlib

    body = {k: v for k, v in payload.items()
            if k not in {"originator_id", "originator_version", "timestamp", "originator_topic",
                         "chain_hash"}}
    header = f"{previous}\n?\n{version}\n{payload.get('timestamp')}\n".encode()
    return hashlib.sha256(header + msgspec.json.encode(body, order="sorted")).hexdigest()
