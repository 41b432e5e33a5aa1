"""A log written before event versions, in a real event store: the December 2026 fixture log
(its Opened stored at class version 1 under import-path topics) loads, projects and passes
`ledgerctl verify` now that Opened is version 2 and upcast on read; the audit export shows the
stored form the chain covers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from typer.testing import CliRunner

from contracts.money import format_micros
from ledger_service.cli import app
from services.database import conninfo
from tests.conftest import Infra
from tests.integration.test_projections_workload import Clock, build, runner_for, scratch_database
from tests.unit.test_event_versions import fixture_log

pytestmark = pytest.mark.integration
cli = CliRunner()


@pytest.fixture
def old_log(infra: Infra) -> Iterator[tuple[str, UUID, int]]:
    with scratch_database(infra, "versions") as database_url:
        ledger = build(database_url, Clock())
        try:
            account_id, balance_micros, rows = fixture_log()
            with psycopg.connect(conninfo(database_url, options="-c search_path=ledger"),
                                 autocommit=True) as conn:
                # as the old code stored them: topics, states and all
                conn.cursor().executemany(
                    "INSERT INTO ledger_events (originator_id, originator_version, topic, state)"
                    " VALUES (%s, %s, %s, %s)",
                    [(account_id, version, topic, state) for version, topic, state in rows])
            runner = runner_for(ledger, database_url)
            runner.catch_up()
            runner.close()
            yield database_url, account_id, balance_micros
        finally:
            ledger.app.close()


def ledgerctl(database_url: str, *args: str) -> Any:
    return cli.invoke(app, list(args), env={"DATABASE_URL": database_url, "COLUMNS": "200",
                                            "ANCHOR_DIR": "/nonexistent/anchors"})


def test_a_log_with_an_upcast_event_passes_verify(old_log: tuple[str, UUID, int]) -> None:
    database_url, account_id, balance_micros = old_log
    result = ledgerctl(database_url, "verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["divergences"] == [] and report["accounts"] == 1
    balance = ledgerctl(database_url, "balance", str(account_id))
    assert balance.exit_code == 0, balance.output
    assert format_micros(balance_micros) in balance.output


def test_the_export_shows_an_upcast_event_as_stored(old_log: tuple[str, UUID, int]) -> None:
    database_url, account_id, _ = old_log
    result = ledgerctl(database_url, "events", str(account_id), "--json")
    assert result.exit_code == 0, result.output
    opened = json.loads(result.stdout.splitlines()[0])
    assert opened["type"] == "Opened" and "actor" not in opened["data"]
