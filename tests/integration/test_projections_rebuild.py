"""Rebuilding a projection while the service runs: writes keep coming, the live runner keeps
applying them, reads answer from the old rows until the swap, and afterwards every projection
equals the replay."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.runner import RebuildInProgress, account_loader, connector, rebuild
from services.database import conninfo
from tests.conftest import Infra
from tests.integration.test_projections_workload import (
    Clock,
    Workload,
    assert_projections_match,
    build,
    runner_for,
)

pytestmark = pytest.mark.integration
TABLES = {"balances": "balances", "statement": "statement_entries", "usage": "usage_daily",
          "holds": "open_holds"}


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def index_definitions(conn: psycopg.Connection[Any], table: str) -> set[str]:
    """Each index's definition, and each constraint's name and definition."""
    rows = conn.execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index"
                        " WHERE indrelid = %s::regclass UNION ALL"
                        " SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint"
                        " WHERE conrelid = %s::regclass", (table, table)).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("name", ["statement", "balances", "usage", "holds"])
def test_a_rebuild_while_running_swaps_in_complete_rows_and_reads_never_see_half(
        infra: Infra, name: str) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    live = runner_for(ledger, infra.database_url, idle_wait_s=0.005)
    workload = Workload(ledger, clock)
    workload.every_kind()
    for _ in range(5):
        workload.open("prepay")
        workload.grant(len(workload.accounts) - 1, "purchased", "50.00")
    live.catch_up()
    live.start()
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            workload.use(4 + workload.counter % 5, 2)
            workload.authorize(4 + workload.counter % 5, 1)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    table = TABLES[name]
    observed: list[tuple[int, int]] = []  # (live rows, shadow rows) during the rebuild
    reader = psycopg.connect(conninfo(infra.database_url, options="-c search_path=ledger"),
                             autocommit=True)

    def watch(position: int, head: int, events: int) -> None:
        observed.append((count(reader, table), count(reader, table + "__rebuild")))

    indexes_before = index_definitions(reader, table)
    try:
        before = count(reader, table)
        result = rebuild(connector(infra.database_url), EventDecoder(ledger.app.mapper),
                         account_loader(ledger.app), name, batch_size=40, progress=watch)
        assert result.events > 0
    finally:
        stop.set()
        writer.join()
        live.stop()
    try:
        assert len(observed) > 2
        # Reads kept answering from the complete live table while the shadow filled up.
        if name != "holds":  # open holds come and go; the others only grow
            assert min(live_rows for live_rows, _ in observed) >= before
        assert observed[0][1] < observed[0][0]
        assert reader.execute("SELECT to_regclass(%s)", (table + "__rebuild",)).fetchone() == (None,)
        live.catch_up()
        assert_projections_match(ledger, infra.database_url, workload.accounts)
        # The swapped-in table has the live table's indexes, policies and grants.
        policies = {name for name, in reader.execute(
            "SELECT polname FROM pg_policy WHERE polrelid = %s::regclass", (table,))}
        assert policies == {"tenant_isolation", "runtime_writes"}
        grants = reader.execute("SELECT has_table_privilege('ledger_reader', %s, 'SELECT')",
                                (table,)).fetchone()
        assert grants == (True,)
        indexes = {r[0] for r in reader.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
            (table,)).fetchall()}
        assert f"{table}_pkey" in indexes
        # Same indexes and constraints under the same names, though built after the fill.
        assert index_definitions(reader, table) == indexes_before
        # And statistics, so the planner does not guess on a table it has never seen.
        analyzed = reader.execute("SELECT last_analyze FROM pg_stat_user_tables"
                                  " WHERE relid = %s::regclass", (table,)).fetchone()
        assert analyzed is not None and analyzed[0] is not None
    finally:
        reader.close()
        ledger.app.close()


def test_a_second_rebuild_of_the_same_projection_is_refused_while_one_runs(infra: Infra) -> None:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    workload = Workload(ledger, clock)
    workload.every_kind()
    errors: list[BaseException] = []

    def nested(position: int, head: int, events: int) -> None:
        if errors:
            return
        try:
            rebuild(connector(infra.database_url), EventDecoder(ledger.app.mapper),
                    account_loader(ledger.app), "usage")
        except BaseException as exc:
            errors.append(exc)

    try:
        rebuild(connector(infra.database_url), EventDecoder(ledger.app.mapper),
                account_loader(ledger.app), "usage", batch_size=10, progress=nested)
    finally:
        ledger.app.close()
    assert errors and isinstance(errors[0], RebuildInProgress)
