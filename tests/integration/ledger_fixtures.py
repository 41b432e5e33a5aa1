"""A Ledger over the test database, as the service builds it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger_service.app.ledger import Ledger, LedgerApplication, ledger_env
from services.database import apply_migrations, eventsourcing_env
from tests.conftest import Infra

MIGRATIONS = Path(__file__).resolve().parents[2] / "ledger_service" / "migrations"


def build_ledger(infra: Infra) -> Ledger:
    apply_migrations(infra.database_url, "ledger", MIGRATIONS)
    app = LedgerApplication(env=ledger_env(eventsourcing_env(infra.database_url, "ledger")))
    return Ledger(app)


@pytest.fixture
def ledger(infra: Infra) -> Iterator[Ledger]:
    built = build_ledger(infra)
    try:
        yield built
    finally:
        built.app.close()
