"""Recurring items over the test database, with a model of the ledger's charge route.

`ModelLedger` keeps what the real ledger keeps for charges: one entry per charge key
(a repeat answers the first), prepay balances that a charge may not take below zero.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from contracts.http.ledger import FeeProration, FeeView, PostedView
from contracts.money import format_micros, to_micros
from invoicing_service.recurring.app.items import RecurringItems
from invoicing_service.recurring.app.ledger import (
    Charged,
    ChargeOutcome,
    Credited,
    CreditOutcome,
    FeeRequest,
    Refused,
    Unavailable,
)
from invoicing_service.recurring.app.renewals import Renewals
from ledger_service.domain.fees import prorated_micros
from services.database import apply_migrations, conninfo, create_pool
from tests.conftest import Infra

MIGRATIONS = Path(__file__).resolve().parents[2] / "invoicing_service" / "migrations"
PRICES = {"vmn": 2_000_000, "vmn_setup": 2_000_000, "shortcode_keyword": 1_000_000,
          "shortcode_keyword_setup": 5_000_000}


class LedgerDown(RuntimeError):
    """The model ledger's way of dying mid-run (after recording a charge)."""


@dataclass
class ModelLedger:
    prepay: dict[UUID, int] = field(default_factory=dict)  # balance; absent: postpay
    entries: dict[str, tuple[UUID, int]] = field(default_factory=dict)  # key -> account, amount
    calls: list[str] = field(default_factory=list)
    unavailable: int = 0  # answer Unavailable this many times
    die_after: int | None = None  # raise LedgerDown after this many more new charges
    delay_s: float = 0.0

    def balance(self, account_id: UUID) -> int:
        return self.prepay[account_id]

    async def charge_many(self, fees: Sequence[FeeRequest]) -> list[ChargeOutcome]:
        """As the ledger's batch route: each fee on its own, in order."""
        return [await self.charge(fee) for fee in fees]

    async def charge(self, fee: FeeRequest) -> ChargeOutcome:
        self.calls.append(fee.charge_key)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.unavailable:
            self.unavailable -= 1
            return Unavailable("model ledger unavailable")
        amount = prorated_micros(PRICES[fee.product], fee.quantity, fee.days,
                                 fee.days_in_period)
        if fee.charge_key not in self.entries:
            if fee.account_id in self.prepay:
                if self.prepay[fee.account_id] < amount:
                    return Refused("insufficient funds")
                self.prepay[fee.account_id] -= amount
            self.entries[fee.charge_key] = (fee.account_id, amount)
            if self.die_after is not None:
                if self.die_after == 0:
                    raise LedgerDown("died after charging")
                self.die_after -= 1
        account_id, amount = self.entries[fee.charge_key]
        return Charged(FeeView(
            entry_id=str(uuid.uuid5(account_id, fee.charge_key)), account_id=account_id,
            charge_key=fee.charge_key, kind="fee", product=fee.product, quantity=fee.quantity,
            unit_price=format_micros(PRICES[fee.product]), amount=format_micros(amount),
            currency="GBP", reference=fee.reference, period=fee.period,
            proration=FeeProration(days=fee.days, days_in_period=fee.days_in_period)
            if fee.days is not None and fee.days_in_period is not None else None,
            balance_after="0", occurred_at=datetime.now(UTC)))


    async def credit(self, account_id: UUID, key: str, amount: str, memo: str
                     ) -> CreditOutcome:
        """As the ledger's adjustment (credit): once per key."""
        micros = to_micros(amount)
        if key not in self.entries:
            if account_id in self.prepay:
                self.prepay[account_id] += micros
            self.entries[key] = (account_id, -micros)
        return Credited(PostedView(
            entry_id=str(uuid.uuid5(account_id, key)), account_id=account_id,
            kind="adjustment", amount=amount, currency="GBP", balance_after="0",
            occurred_at=datetime.now(UTC)))


@dataclass
class ManualClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def set_day(self, day: date) -> None:
        self.now = datetime.combine(day, time(9, 0), tzinfo=UTC)

    def advance(self, **delta: Any) -> None:
        self.now += timedelta(**delta)


async def fresh_pool(infra: Infra, schema: str, max_size: int = 8) -> AsyncConnectionPool:
    async with await psycopg.AsyncConnection.connect(
            conninfo(infra.database_url), autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(schema)))
    await asyncio.to_thread(apply_migrations, infra.database_url, schema, MIGRATIONS)
    pool = create_pool(infra.database_url, schema, max_size=max_size, name="recurring-test")
    await pool.open(wait=True)
    return pool


def renewals(pool: AsyncConnectionPool, ledger: Any, clock: ManualClock, *,
             grace_days: int = 7, batch_size_max: int = 50) -> Renewals:
    return Renewals(pool, ledger, grace=timedelta(days=grace_days),
                    retry_interval=timedelta(days=1), batch_size_max=batch_size_max,
                    concurrency=8, clock=clock)


def items(pool: AsyncConnectionPool, run: Renewals) -> RecurringItems:
    return RecurringItems(pool, run)


async def fetch(pool: AsyncConnectionPool, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)  # type: ignore[arg-type]
        return await cursor.fetchall()
