"""One event no projection can store never stops the projections for everyone else.

Issue 14, item 1 (second line of defence): text with a NUL got past the boundary, PostgreSQL
refused the statement row (`invalid byte sequence for encoding "UTF8": 0x00`), the batch
rolled back and the runner retried it for ever: balances, holds, statement and usage stopped
for every account, and `ledgerctl rebuild` failed the same way. The contracts now refuse such
text; here it is written through the application layer, as a bug or an older producer could,
and the runner must quarantine the event, keep every other account current, and say so in
`ledgerctl status` and `ledgerctl verify`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from typer.testing import CliRunner

from contracts.http.ledger import Adjustment
from contracts.usage import UsageRecorded
from ledger_service.app import accounts, intake
from ledger_service.app.ledger import Ledger
from ledger_service.cli import app
from ledger_service.lag import follower_metrics
from ledger_service.projections.runner import QUARANTINED, ProjectionRunner
from services.database import conninfo, create_pool
from tests.conftest import Infra
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    assert_projections_match,
    build,
    key,
    runner_for,
    scratch_database,
)

pytestmark = pytest.mark.integration
cli = CliRunner()


@pytest.fixture
def scratch(infra: Infra) -> Iterator[tuple[str, Ledger, Workload]]:
    with scratch_database(infra, "quarantine") as database_url:
        clock = Clock()
        ledger = build(database_url, clock)
        try:
            workload = Workload(ledger, clock)
            for _ in range(3):
                workload.open("prepay")
            for index in range(3):
                workload.grant(index, "purchased", "20.00")
            yield database_url, ledger, workload
        finally:
            ledger.app.close()


def ledgerctl(database_url: str, *args: str) -> Any:
    return cli.invoke(app, list(args), env={"DATABASE_URL": database_url, "COLUMNS": "250"})


def rows(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo(database_url, options="-c search_path=ledger")) as conn:
        return conn.execute(query, params).fetchall()


async def quarantined_gauge(database_url: str) -> dict[str, float]:
    pool = create_pool(database_url, "ledger", max_size=1, name="quarantine-test")
    await pool.open(wait=True)
    try:
        families = await follower_metrics(pool)
    finally:
        await pool.close()
    family, = (f for f in families if f.name == "ledger_projection_quarantined_events")
    return {sample.labels["projection"]: sample.value for sample in family.samples}


def unstorable_usage(workload: Workload, account_id: UUID) -> None:
    # Built in Python, not decoded: a Struct's constructor does not check Meta constraints, so
    # this is the path a bug (or a producer on an older contract) would take past the boundary.
    intake.apply_usage(workload.ledger, [UsageRecorded(
        event_id=f"nul-{uuid.uuid4().hex[:8]}", account_id=account_id, product="sms", quantity=1,
        occurred_at=workload.clock.now, status="submitted", reference="ref\x00x")])


def unstorable_adjustment(workload: Workload, account_id: UUID) -> None:
    body = Adjustment(direction="credit", amount="1.00", memo="memo with a \x00 inside")  # type: ignore[arg-type]
    accounts.adjust(workload.ledger, account_id, body, "ops", key())


def wait_until_caught_up(database_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (head,), = rows(database_url, "SELECT coalesce(max(notification_id), 0) FROM ledger_events")
        positions = rows(database_url, "SELECT position FROM projection_positions"
                         " WHERE name NOT LIKE '%%__rebuild'")
        if all(p >= head for p, in positions):
            return
        time.sleep(0.05)
    raise AssertionError(f"projections behind the log: {positions} < {head}")


def test_an_unstorable_event_is_quarantined_and_every_other_account_keeps_up(
    scratch: tuple[str, Ledger, Workload],
) -> None:
    database_url, ledger, workload = scratch
    hostile, neighbour, other = workload.accounts
    runner: ProjectionRunner = runner_for(ledger, database_url, idle_wait_s=0.005,
                                          linger_s=0.005)
    runner.catch_up()
    quarantined_before = QUARANTINED.labels(projection="statement")._value.get()
    runner.start()
    try:
        workload.use(1, 2)
        unstorable_usage(workload, hostile)
        workload.use(2, 3)
        unstorable_adjustment(workload, hostile)
        workload.use(1, 1)
        workload.use(0, 1)  # the hostile account's next, storable, event
        wait_until_caught_up(database_url)
        # The runner keeps going after the quarantine: later writes land promptly too.
        workload.use(1, 4)
        workload.clock.advance(60)
        wait_until_caught_up(database_url)
    finally:
        runner.stop()

    assert_projections_match(ledger, database_url, [neighbour, other])
    quarantine = rows(database_url, "SELECT projection, account_id, event_type, error"
                      " FROM projection_quarantine ORDER BY position")
    assert [(p, a) for p, a, _, _ in quarantine] == [("statement", hostile)] * 2
    assert [t for _, _, t, _ in quarantine] == ["BillingAccount.UsageRecorded",
                                                 "BillingAccount.Adjusted"]
    assert all("0x00" in e or "NUL" in e for _, _, _, e in quarantine), quarantine
    assert QUARANTINED.labels(projection="statement")._value.get() == quarantined_before + 2
    # The hostile account's balance (no text in it) is current, and its statement has every
    # entry but the two quarantined ones.
    ledger.evict([hostile])
    (balance,), = rows(database_url, "SELECT balance_micros FROM balances WHERE account_id = %s",
                       hostile)
    assert balance == ledger.load(hostile).balance_micros
    kinds = [k for k, in rows(database_url, "SELECT kind FROM statement_entries"
                              " WHERE account_id = %s ORDER BY entry_seq", hostile)]
    assert kinds == ["grant", "usage"], kinds

    # The alarm on /metrics is read from the table: the runner's counter above lives in the
    # follower process, which a scrape of the service does not reach.
    assert asyncio.run(quarantined_gauge(database_url)) == {
        "balances": 0, "statement": 2, "usage": 0, "holds": 0}

    status = ledgerctl(database_url, "status")
    assert status.exit_code == 0, status.output
    assert "2 quarantined events" in status.output
    assert str(hostile) in status.output
    verified = ledgerctl(database_url, "verify")
    assert verified.exit_code == 1, verified.output
    assert "quarantined:statement" in verified.output


def test_rebuild_and_catch_up_quarantine_instead_of_failing(
    scratch: tuple[str, Ledger, Workload],
) -> None:
    database_url, ledger, workload = scratch
    hostile, neighbour, other = workload.accounts
    unstorable_usage(workload, hostile)
    workload.use(1, 2)
    workload.use(2, 2)

    caught_up = ledgerctl(database_url, "catch-up")
    assert caught_up.exit_code == 0, caught_up.output
    assert_projections_match(ledger, database_url, [neighbour, other])
    (first,), = rows(database_url, "SELECT position FROM projection_quarantine"
                     " WHERE projection = 'statement'")

    rebuilt = ledgerctl(database_url, "rebuild", "statement")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert_projections_match(ledger, database_url, [neighbour, other])
    # The rebuild met the same event and quarantined it again: one row, not two, and none left
    # under the shadow's name.
    assert rows(database_url, "SELECT projection, position FROM projection_quarantine") == [
        ("statement", first)]
