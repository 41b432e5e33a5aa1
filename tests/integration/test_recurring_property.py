"""Random items, starts, ends, cancellations, top-ups, spending and clock jumps over a year,
through the real renewals over PostgreSQL and a model of the ledger (one entry per charge
key; prepay balances a charge may not take below zero). After every run:

- the ledger's entries and the charged rows agree, one per item and period;
- an item never refused is charged exactly the periods due by today (setup, each covered
  month), prorated as documented; a refused one never more;
- prepay balances never go below zero;
- past due and suspended only for items the ledger refused for funds, never on postpay.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from contracts.http.invoicing import CreateRecurringItem
from invoicing_service.recurring.app.ledger import ChargeOutcome, FeeRequest, Refused
from invoicing_service.recurring.domain import RecurringProduct, charges_due
from tests.conftest import Infra
from tests.integration.recurring_fixtures import (
    ManualClock,
    ModelLedger,
    fetch,
    fresh_pool,
    items,
    renewals,
)

pytestmark = pytest.mark.integration
POUND = 1_000_000
START = date(2026, 1, 1)
PRODUCTS = {"vmn": RecurringProduct("vmn", "vmn_setup", prorate=True),
            "shortcode_keyword": RecurringProduct("shortcode_keyword",
                                                  "shortcode_keyword_setup", prorate=True)}
ACCOUNTS = 3  # 0 and 1 prepay, 2 postpay


class RefusalsSeen(ModelLedger):
    """The model ledger, remembering which charge keys it refused."""

    refused: set[str]

    async def charge(self, fee: FeeRequest) -> ChargeOutcome:
        outcome = await super().charge(fee)
        if isinstance(outcome, Refused):
            self.refused.add(fee.charge_key)
        return outcome


steps = st.lists(st.one_of(
    st.tuples(st.just("create"), st.integers(0, ACCOUNTS - 1), st.sampled_from(list(PRODUCTS)),
              st.integers(-20, 60), st.one_of(st.none(), st.integers(0, 200))),
    st.tuples(st.just("topup"), st.integers(0, 1), st.sampled_from([2, 5, 20])),
    st.tuples(st.just("spend"), st.integers(0, 1), st.sampled_from([3, 10, 100])),
    st.tuples(st.just("cancel"), st.integers(0, 20), st.sampled_from(["now", "period_end"])),
    st.tuples(st.just("jump"), st.integers(1, 45)),
), min_size=3, max_size=18)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=steps)
def test_random_lives_of_items_are_charged_once_per_period_and_only_short_ones_fall_due(
        infra: Infra, script: list[tuple[Any, ...]]) -> None:
    asyncio.run(play(infra, script))


async def play(infra: Infra, script: list[tuple[Any, ...]]) -> None:
    pool = await fresh_pool(infra, "recurring_property", max_size=4)
    accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
    ledger = RefusalsSeen(prepay={accounts[0]: 10 * POUND, accounts[1]: 0})
    ledger.refused = set()
    clock = ManualClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    run = renewals(pool, ledger, clock, grace_days=7)
    book = items(pool, run)
    created: list[UUID] = []
    try:
        for step in script:
            today = clock().date()
            if step[0] == "create":
                _, account, product, offset, length = step
                starts_on = today + timedelta(days=offset)
                body = CreateRecurringItem(
                    product=product, quantity=1, reference=f"R{len(created)}",
                    starts_on=starts_on,
                    ends_on=None if length is None else starts_on + timedelta(days=length))
                response, _ = await book.create(accounts[account], body, uuid.uuid4().hex, "h")
                created.append(UUID(msgspec.json.decode(response)["item_id"]))
            elif step[0] == "topup":
                ledger.prepay[accounts[step[1]]] += step[2] * POUND
                await run.retry_account(accounts[step[1]])
            elif step[0] == "spend":
                account = accounts[step[1]]
                ledger.prepay[account] = max(0, ledger.prepay[account] - step[2] * POUND)
            elif step[0] == "cancel" and created:
                await book.cancel(created[step[1] % len(created)], step[2], "hypothesis")
            elif step[0] == "jump":
                clock.advance(days=step[1])
                await run.run()
            await check(pool, ledger, accounts, clock().date())
    finally:
        await pool.close()


async def check(pool: Any, ledger: RefusalsSeen, accounts: list[UUID], today: date) -> None:
    assert all(balance >= 0 for balance in ledger.prepay.values())
    charged = {f"recurring:{item_id}:{period}" for item_id, period in await fetch(
        pool, "SELECT item_id, period FROM recurring_charges WHERE status = 'charged'")}
    assert charged == set(ledger.entries), "the ledger and the charged rows agree"
    rows = await fetch(pool, "SELECT item_id, account_id, product, starts_on, ends_on, status,"
                             " planned_through FROM recurring_items")
    for item_id, account_id, product, starts_on, ends_on, status, _ in rows:
        keys = {k for k in ledger.entries if k.startswith(f"recurring:{item_id}:")}
        refused = {k for k in ledger.refused if k.startswith(f"recurring:{item_id}:")}
        due = {f"recurring:{item_id}:{c.period}"
               for c in charges_due(PRODUCTS[product], 1, starts_on, ends_on, today)}
        assert keys <= due, "never charged beyond what is due"
        if not refused:
            assert keys == due, f"an item never refused is charged all that is due ({status})"
            assert status in ("active", "cancelled")
        note(f"item {status}" + (" (refused once)" if refused else ""))
        if status in ("past_due", "suspended"):
            assert refused, "past due only when the ledger refused for funds"
            assert account_id != accounts[2], "postpay is never refused"
