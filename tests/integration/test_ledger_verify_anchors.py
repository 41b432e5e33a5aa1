"""`verify` checks many anchors in one pass over the log: as many statements read the event
log with twelve anchors as with one (it used to rescan the log per anchor), and each anchor's
root is still its own: an edit, a truncation and a re-ordering between anchors flag exactly
the anchors whose heads they change."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest

from contracts.ledger import LedgerAnchor
from ledger_service.anchors import anchors_to_check, make_anchor, public_key_of, sign_anchor
from ledger_service.app.ledger import Ledger
from ledger_service.projections.decoding import EventDecoder
from ledger_service.projections.verify import VerifyReport, verify
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
SEED = parse_seed(DEVELOPMENT_ANCHOR_SIGNING_KEY)
ROUNDS = 12


class CountingCursor(psycopg.Cursor[Any]):
    statements: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.statements.append(str(query))
        return super().execute(query, *args, **kwargs)


class CountingServerCursor(psycopg.ServerCursor[Any]):
    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        CountingCursor.statements.append(str(query))
        return super().execute(query, *args, **kwargs)


@dataclass
class Anchored:
    database_url: str
    ledger: Ledger
    workload: Workload
    anchors: list[LedgerAnchor]  # anchors[r] made after round r

    def connect(self, *, superuser_bypass: bool = False) -> psycopg.Connection[Any]:
        options = "-c search_path=ledger"
        if superuser_bypass:
            options += " -c session_replication_role=replica"
        return psycopg.connect(conninfo(self.database_url, options=options), autocommit=True)

    def verify(self, anchors: Sequence[LedgerAnchor] | None = None) -> VerifyReport:
        with self.connect() as conn:
            conn.cursor_factory = CountingCursor
            conn.server_cursor_factory = CountingServerCursor
            return verify(conn, EventDecoder(self.ledger.app.mapper),
                          anchors=self.anchors if anchors is None else anchors,
                          trusted_anchor_key=public_key_of(SEED))

    def flagged(self) -> list[int]:
        """The rounds whose anchors verify reports, and every other check it fails."""
        report = self.verify()
        by_id = {a.anchor_id: r for r, a in enumerate(self.anchors)}
        return sorted(by_id[d.where.split(" ")[0]] for d in report.divergences
                      if d.check == "anchor")

    def event_of(self, account: UUID, round_: int) -> tuple[int, int]:
        """(position, version) of the account's event written in that round."""
        low = self.anchors[round_ - 1].position if round_ else 0
        with self.connect() as conn:
            row = conn.execute("SELECT notification_id, originator_version FROM ledger_events"
                               " WHERE originator_id = %s AND notification_id > %s AND"
                               " notification_id <= %s", (account, low,
                                                          self.anchors[round_].position)
                               ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


@pytest.fixture
def anchored(infra: Infra) -> Iterator[Anchored]:
    with scratch_database(infra, "anchors") as database_url:
        clock = Clock()
        ledger = build(database_url, clock)
        try:
            workload = Workload(ledger, clock)
            for _ in range(3):
                workload.open("prepay")
                workload.grant(len(workload.accounts) - 1, "purchased", "50.00")
            anchors = []
            with psycopg.connect(conninfo(database_url, options="-c search_path=ledger"),
                                 autocommit=True) as conn:
                for round_ in range(ROUNDS):
                    workload.use(round_ % 3, 1)  # one event of one account per round
                    made = make_anchor(conn, SEED, reason="manual")
                    assert made is not None
                    anchors.append(made)
            runner = runner_for(ledger, database_url)
            runner.catch_up()
            runner.close()
            yield Anchored(database_url, ledger, workload, anchors)
        finally:
            ledger.app.close()


def test_verify_reads_the_log_once_however_many_anchors(anchored: Anchored) -> None:
    CountingCursor.statements = []
    one = anchored.verify(anchored.anchors[:1])
    reads_with_one = [s for s in CountingCursor.statements if "ledger_events" in s]
    CountingCursor.statements = []
    every = anchored.verify()
    reads_with_twelve = [s for s in CountingCursor.statements if "ledger_events" in s]
    assert one.ok and every.ok, every.divergences
    assert (one.anchors_checked, every.anchors_checked) == (1, ROUNDS)
    assert len(reads_with_twelve) == len(reads_with_one), reads_with_twelve
    # one stream of the events, the head, and the entry index's look-up into the log
    assert len(reads_with_twelve) <= 3, reads_with_twelve


def test_a_deleted_event_between_anchors_flags_the_anchors_whose_heads_it_changes(
        anchored: Anchored) -> None:
    account = anchored.workload.accounts[0]  # written in rounds 0, 3, 6, 9
    _, version = anchored.event_of(account, 3)
    with anchored.connect(superuser_bypass=True) as conn:
        conn.execute("DELETE FROM ledger_events WHERE originator_id = %s"
                     " AND originator_version = %s", (account, version))
    # Its head at the anchors of rounds 3 to 5 is now the version before; from round 6 on,
    # the account's next event is the head again, unchanged.
    assert anchored.flagged() == [3, 4, 5]


def test_a_truncated_log_flags_the_anchors_past_its_end(anchored: Anchored) -> None:
    with anchored.connect(superuser_bypass=True) as conn:
        conn.execute("DELETE FROM ledger_events WHERE notification_id > %s",
                     (anchored.anchors[8].position,))
    assert anchored.flagged() == [9, 10, 11]
    problems = [d.found for d in anchored.verify().divergences if d.check == "anchor"]
    assert all("truncated" in p for p in problems), problems


def test_events_re_ordered_in_the_log_flag_the_anchors_between_them(
        anchored: Anchored) -> None:
    """Swapping two events' places in the log keeps every account's chain intact (versions
    and hashes are untouched), so only the anchors between the two places can see it."""
    account = anchored.workload.accounts[1]  # written in rounds 1, 4, 7, 10
    (early, _), (late, _) = anchored.event_of(account, 4), anchored.event_of(account, 7)
    with anchored.connect(superuser_bypass=True) as conn:
        for old, new in ((early, -1), (late, early), (-1, late)):
            conn.execute("UPDATE ledger_events SET notification_id = %s"
                         " WHERE notification_id = %s", (new, old))
    report = anchored.verify()
    assert not [d for d in report.divergences if d.check in ("chain", "version_gap")]
    assert anchored.flagged() == [4, 5, 6]


def test_every_period_close_and_the_anchors_since_the_last_are_checked() -> None:
    def anchor(position: int, reason: Any) -> LedgerAnchor:
        return sign_anchor(SEED, position=position, accounts=1, merkle_root_hex="00",
                           reason=reason, period="2026-11" if reason == "period_close" else None,
                           now=datetime(2026, 12, 1, tzinfo=UTC))

    anchors = [anchor(10, "interval"), anchor(20, "period_close"), anchor(25, "interval"),
               anchor(30, "period_close"), anchor(40, "interval"), anchor(50, "manual")]
    chosen, skipped = anchors_to_check(list(reversed(anchors)))
    assert [a.position for a in chosen] == [20, 30, 40, 50]
    assert skipped == 2
    assert anchors_to_check(anchors[:1]) == ([anchors[0]], 0)  # no close yet: all of them
