"""Accounts for the benchmarks, opened in-process through the domain and the Ledger's own
unit of work (the same commit path as every command), before the service starts.

Opening them over HTTP would measure the HTTP layer 2,000 times for nothing; what the
benchmarks need is accounts that exist in the event store exactly as the service would
have written them.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import psycopg

from bench import infra
from ledger_service.app.ledger import Ledger, UnitOfWork
from ledger_service.domain.account import BillingAccount
from services.database import conninfo

SMS_UNIT_PRICE_MICROS = 39_500  # the default catalogue's GBP starter price of "sms"
ACCOUNTS_PER_COMMIT_MAX = 250


def fresh_database_with_accounts(count: int, credit_micros: int) -> tuple[str, list[UUID]]:
    """The benchmark's database, dropped and created, holding ``count`` prepay accounts;
    returns its URL and the account ids.

    Ends with a CHECKPOINT, so that the writes of the benchmark before (a million events,
    gigabytes of WAL) are not flushed during this one's measurement: run after intake,
    authorize's p99 at 1,000/s was 11-12 ms, and 8 ms run alone."""
    url = infra.recreate_database()
    ledger = infra.open_ledger(url)
    try:
        account_ids = open_prepay_accounts(ledger, count, credit_micros)
    finally:
        ledger.app.close()
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    return url, account_ids


def open_prepay_accounts(ledger: Ledger, count: int, credit_micros: int) -> list[UUID]:
    """Open ``count`` prepay GBP starter accounts, each with one purchased grant."""
    ledger.catalogue()  # seed the default catalogue as the service would on its first start
    account_ids = [uuid.uuid4() for _ in range(count)]
    for start in range(0, count, ACCOUNTS_PER_COMMIT_MAX):
        chunk = account_ids[start:start + ACCOUNTS_PER_COMMIT_MAX]
        ledger.run(functools.partial(_open_with_credit, account_ids=chunk,
                                     credit_micros=credit_micros))
    return account_ids


def _open_with_credit(work: UnitOfWork, account_ids: Sequence[UUID], credit_micros: int) -> None:
    now = datetime.now(UTC)
    for account_id in account_ids:
        account = BillingAccount.open(account_id, now, account_type="prepay", currency="GBP",
                                      tier="starter")
        account.grant(f"grant:bench:{account_id}", "purchased", credit_micros, now,
                      reason="benchmark credit", actor="bench")
        work.touch(account)
