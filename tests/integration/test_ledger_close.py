"""Closing an account records when: the view's closed_at is the Closed event's time, after the
write, after a cold load, and after a snapshot of the closed account."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest

from contracts.http.ledger import AccountView
from ledger_service.app import accounts
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import Ledger
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.verify import verify
from services.database import conninfo
from tests.conftest import Infra
from tests.integration.test_ledger_app import open_prepay

pytestmark = pytest.mark.integration


def test_close_sets_closed_at_and_a_cold_load_and_a_snapshot_keep_it(ledger: Ledger) -> None:
    account_id = open_prepay(ledger)
    before = datetime.now(UTC)
    outcome = accounts.close_account(ledger, account_id, "closed by operator", "tester",
                                     Idempotency("http:close", None, "h"))
    view = msgspec.json.decode(outcome.response, type=AccountView)
    assert view.status == "closed"
    assert view.closed_at is not None
    assert before - timedelta(seconds=1) <= view.closed_at <= datetime.now(UTC)

    ledger.evict([account_id])  # what is stored, replayed from the events
    assert accounts.account_view(ledger.load(account_id)).closed_at == view.closed_at

    assert ledger.app.snapshots is not None
    account = ledger.load(account_id)
    ledger.app.take_snapshot(account_id, version=account.version)
    ledger.evict([account_id])
    assert accounts.account_view(ledger.load(account_id)).closed_at == view.closed_at


def test_an_open_account_has_no_closed_at(ledger: Ledger) -> None:
    account_id = open_prepay(ledger)
    view = accounts.account_view(ledger.load(account_id))
    assert view.status == "open" and view.closed_at is None


def test_an_account_from_a_snapshot_older_than_closed_at_still_reads_and_verifies(
    ledger: Ledger, infra: Infra,
) -> None:
    account_id = open_prepay(ledger)
    closed = accounts.close_account(ledger, account_id, "closed by operator", "tester",
                                    Idempotency("http:close", None, "h"))
    closed_at = msgspec.json.decode(closed.response, type=AccountView).closed_at
    ledger.app.take_snapshot(account_id, version=ledger.load(account_id).version)
    with psycopg.connect(conninfo(infra.database_url, options="-c search_path=ledger"),
                         autocommit=True) as conn:
        # The snapshot as the release before this field stored it: without it.
        row = conn.execute("SELECT state FROM ledger_snapshots WHERE originator_id = %s",
                           (account_id,)).fetchone()
        assert row is not None
        state = json.loads(bytes(row[0]))
        del state["state"]["_closed_at"]
        conn.execute("UPDATE ledger_snapshots SET state = %s WHERE originator_id = %s",
                     (json.dumps(state, separators=(",", ":")).encode(), account_id))
        ledger.evict([account_id])
        assert ledger.load(account_id).closed_at is None  # loaded from the old snapshot
        assert accounts.read_account(ledger, account_id).closed_at == closed_at
        report = verify(conn, EventDecoder(ledger.app.mapper), account_id=account_id)
    assert report.ok, report.divergences
