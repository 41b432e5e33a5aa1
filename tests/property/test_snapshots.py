"""Snapshots taken from the account in memory (LedgerApplication._take_snapshots) against
random command sequences, saved through the application one command at a time:

- every snapshot holds exactly the state a replay of the events up to its version gives;
- at the end of every save (where an account's current version always is), the latest
  snapshot is fewer than the interval behind;
- an account loaded from its snapshots equals the live one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from eventsourcing.domain import Snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_service.app.ledger import LedgerApplication
from ledger_service.domain import BillingAccount, debit_refs_of
from tests.property.test_projections_statement import Driver, command

INTERVAL = 5


class SmallIntervals(LedgerApplication):
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {BillingAccount: INTERVAL}


class SavingDriver(Driver):
    """Saves the account through the application after each command, in one save."""

    def __init__(self, account_type: str, app: LedgerApplication) -> None:
        self.app = app
        self.save_ends: list[int] = []
        super().__init__(account_type)

    def collect(self) -> None:
        recordings = self.app.save(self.account)
        for recording in recordings:
            self.events.append(recording.domain_event)
            self.debits.extend(debit_refs_of(recording.domain_event))
        if recordings:
            self.save_ends.append(recordings[-1].domain_event.originator_version)


def round_trip(app: LedgerApplication, snapshot: Any) -> dict[str, Any]:
    return app.mapper.to_domain_event(app.mapper.to_stored_event(snapshot)).state  # type: ignore[no-any-return, attr-defined]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(account_type=st.sampled_from(["trial", "prepay", "postpay"]),
       script=st.lists(command, min_size=1, max_size=40))
def test_snapshots_from_memory_equal_the_replayed_state(account_type: str,
                                                        script: list[tuple[str, int, int]]) -> None:
    app = SmallIntervals()
    try:
        driver = SavingDriver(account_type, app)
        for name, a, b in script:
            driver.play(name, a, b)
        account_id = driver.account.id
        snapshots = list(app.snapshots.get(account_id)) if app.snapshots else []
        by_version = {s.originator_version: s for s in snapshots}
        if driver.account.version >= INTERVAL:
            assert snapshots
        for version, snapshot in by_version.items():
            replayed: Any = None
            for event in driver.events[:version]:
                replayed = event.mutate(replayed)
            assert replayed.version == version
            assert snapshot.state == round_trip(app, Snapshot.take(replayed))  # type: ignore[attr-defined]
        for version in driver.save_ends:
            latest = max((v for v in by_version if v <= version), default=0)
            assert version - latest < INTERVAL
        app.repository.cache = None  # type: ignore[misc]  # load from the store
        loaded: Any = app.repository.get(account_id)
        assert round_trip(app, Snapshot.take(loaded)) == round_trip(app, Snapshot.take(driver.account))
    finally:
        app.close()
