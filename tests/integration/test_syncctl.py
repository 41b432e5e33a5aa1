"""syncctl against the sync schema: status, listing and re-driving dead letters, re-syncing an
invoice, and mappings an operator sets."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

import sync_service
from services.database import apply_migrations, conninfo
from sync_service.cli import app
from tests.conftest import Infra

pytestmark = pytest.mark.integration


def test_syncctl_lists_redrives_and_maps(infra: Infra) -> None:
    apply_migrations(infra.database_url, "sync", Path(sync_service.__file__).parent / "migrations")
    tenant = f"tenant-{uuid.uuid4()}"
    with psycopg.connect(conninfo(infra.database_url, options="-c search_path=sync"),
                         autocommit=True) as conn:
        conn.execute("INSERT INTO connections (connection_id, name) VALUES (%s, 'CLI Org')",
                     (tenant,))
        job_id = conn.execute(
            "INSERT INTO sync_jobs (connection_id, kind, subject_id, source_key, payload, status,"
            " failures, last_error) VALUES (%s, 'invoice', 'inv-cli-1', %s, %s, 'dead', 8,"
            " 'Xero answered 400: TaxType BOGUS') RETURNING job_id",
            (tenant, f"invoice:inv-cli-{tenant}", Jsonb({}))).fetchone()[0]  # type: ignore[index]
        runner = CliRunner(env={"COLUMNS": "250"})
        base = ["--database-url", infra.database_url]
        listed = runner.invoke(app, [*base, "dead-letters"])
        assert listed.exit_code == 0, listed.output
        assert "inv-cli-1" in listed.output and "BOGUS" in listed.output
        shown = runner.invoke(app, [*base, "status"])
        assert shown.exit_code == 0 and "CLI Org" in shown.output
        assert runner.invoke(app, [*base, "retry", str(job_id)]).exit_code == 0
        assert runner.invoke(app, [*base, "retry", str(job_id)]).exit_code == 1  # not dead now
        row = conn.execute("SELECT status, failures FROM sync_jobs WHERE job_id = %s",
                           (job_id,)).fetchone()
        assert row == ("pending", 0)
        conn.execute("UPDATE sync_jobs SET status = 'done' WHERE job_id = %s", (job_id,))
        assert runner.invoke(app, [*base, "resync", "inv-cli-1"]).exit_code == 0
        mapped = runner.invoke(app, [*base, "map-product", "sms", "--item-code", "SMS-UK",
                                     "--account-code", "201", "--connection", tenant])
        assert mapped.exit_code == 0, mapped.output
        assert conn.execute("SELECT item_code, account_code FROM mappings WHERE product = 'sms'"
                            " AND connection_id = %s", (tenant,)).fetchone() == ("SMS-UK", "201")
        refused = runner.invoke(app, [*base, "map-tax", "sideways", "OUTPUT2"])
        assert refused.exit_code == 2
        account = uuid.uuid4()
        assert runner.invoke(app, [*base, "assign", str(account), tenant]).exit_code == 0
        assert runner.invoke(app, [*base, "assign", str(account), "nowhere"]).exit_code == 2
