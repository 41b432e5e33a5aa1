"""Closing an account records when: the view's closed_at is the Closed event's time, after the
write, after a cold load, and after a snapshot of the closed account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts.http.ledger import AccountView
from ledger_service.app import accounts
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import Ledger
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
