"""An immediate plan change through the real ledger (a process): the unused days of the
plan left are credited back, the new plan is charged for the rest of the month, each once
however often the change is retried; a prepay account pays it from its balance, a postpay
account sees it on the month's invoice lines."""

from __future__ import annotations

import calendar
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest

from contracts.http.invoicing import ChangeRecurringItem, CreateRecurringItem, RecurringItemView
from contracts.ledger import EntryPosted
from contracts.money import format_micros, to_micros
from invoicing_service.app.customers import Customers
from invoicing_service.domain.lines import UsageTotal, usage_drafts
from invoicing_service.recurring.app.items import RecurringItems
from invoicing_service.recurring.app.ledger import LedgerCharges
from invoicing_service.recurring.app.renewals import Clock, Renewals
from invoicing_service.recurring.domain import (
    InsufficientFunds,
    InvalidItem,
    ItemCancelled,
    UnknownProduct,
    period_of,
)
from ledger_service.domain.fees import prorated_micros
from services.http import DEVELOPMENT_JWT_SECRET
from tests.conftest import Infra
from tests.integration.recurring_fixtures import fetch, fresh_pool
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_charges import statement
from tests.integration.test_ledger_http import OPERATOR, balance, opened

pytestmark = pytest.mark.integration
VMN = 2_000_000  # the catalogue's monthly vmn, GBP


@pytest.fixture(scope="module")
def ledger(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    service = ServiceProcess("ledger_service", infra.service_env()).start(
        tmp_path_factory.mktemp("ledger-plan-change"))
    service.wait_ready()
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client
    assert service.stop() == 0


@pytest.fixture
async def recurring(infra: Infra, ledger: httpx.Client) -> AsyncIterator[RecurringItems]:
    pool = await fresh_pool(infra, "recurring_change_test")
    charges = LedgerCharges(str(ledger.base_url), DEVELOPMENT_JWT_SECRET, timeout_s=10,
                            attempts_max=2, retry_initial_s=0.1, retry_max_s=0.2)
    # the real clock: the ledger dates its entries by it
    run = Renewals(pool, charges, grace=timedelta(days=7),
                   retry_interval=timedelta(days=1), batch_size_max=50,
                   concurrency=4, clock=Clock())
    try:
        yield RecurringItems(pool, run)
    finally:
        await charges.aclose()
        await pool.close()


def this_month() -> tuple[date, date, int]:
    today = datetime.now(UTC).date()
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    return today.replace(day=1), today, days_in_month


async def add_number(recurring: RecurringItems, account: str, starts_on: date
                     ) -> RecurringItemView:
    body = CreateRecurringItem(product="vmn", quantity=1, starts_on=starts_on,
                               reference=f"+4477{uuid.uuid4().int % 10**12:012d}")
    response, _ = await recurring.create(UUID(account), body, uuid.uuid4().hex,
                                         msgspec.json.encode(body).hex())
    return msgspec.json.decode(response, type=RecurringItemView)


async def change(recurring: RecurringItems, item: RecurringItemView, key: str,
                 **body: Any) -> tuple[RecurringItemView, bool]:
    change_body = ChangeRecurringItem(**body)
    response, replayed = await recurring.change(
        UUID(item.item_id), change_body, key, msgspec.json.encode(change_body).hex(), "ops")
    return msgspec.json.decode(response, type=RecurringItemView), replayed


def expected(today: date, days_in_month: int, new_unit: int, new_quantity: int
             ) -> tuple[int, int]:
    """(credit, new charge) for a whole month of one vmn changed today."""
    used, left = today.day - 1, days_in_month - today.day + 1
    whole = left == days_in_month
    credit = VMN - prorated_micros(VMN, 1, used, days_in_month)
    charge = prorated_micros(new_unit, new_quantity, None if whole else left,
                             None if whole else days_in_month)
    return credit, charge


async def test_a_prepay_upgrade_now_credits_the_unused_days_and_charges_the_rest_once(
        ledger: httpx.Client, recurring: RecurringItems) -> None:
    first, today, days_in_month = this_month()
    account = opened(ledger, credit="20.00")
    item = await add_number(recurring, account, first)  # setup + the whole month: 4.00
    assert balance(ledger, account) == "16.00"
    credit, charge = expected(today, days_in_month, VMN, 3)

    changed, replayed = await change(recurring, item, "up-1", quantity=3, effective="now")
    assert not replayed and changed.quantity == 3 and changed.product == "vmn"
    (plan_change,) = changed.plan_changes
    assert (to_micros(plan_change.credit), to_micros(plan_change.amount)) == (credit, charge)
    assert plan_change.effective_on == today and plan_change.from_quantity == 1
    after = format_micros(16_000_000 + credit - charge)
    assert balance(ledger, account) == after
    for _ in range(2):  # retried twice: the first answer, nothing charged again
        again, replayed = await change(recurring, item, "up-1", quantity=3, effective="now")
        assert replayed and again == changed
    assert balance(ledger, account) == after

    entries = statement(ledger, account, 5)
    fee = next(e for e in entries if e["entry_id"] == plan_change.entry_id)
    assert (fee["kind"], fee["reference"], fee["amount"]) == (
        "fee", item.reference, format_micros(-charge))
    if credit:
        back = next(e for e in entries if e["entry_id"] == plan_change.credit_entry_id)
        assert back["kind"] == "adjustment" and item.reference in back["description"]
        assert back["amount"] == format_micros(credit)


async def test_a_prepay_change_the_balance_cannot_cover_writes_nothing(
        ledger: httpx.Client, recurring: RecurringItems) -> None:
    first, _, _ = this_month()
    account = opened(ledger, credit="5.00")
    item = await add_number(recurring, account, first)
    with pytest.raises(InsufficientFunds):
        await change(recurring, item, "big", quantity=500, effective="now")
    assert balance(ledger, account) == "1.00"
    pool = recurring.pool
    assert await fetch(pool, "SELECT count(*) FROM recurring_plan_changes") == [(0,)]
    assert await fetch(pool, "SELECT quantity FROM recurring_items WHERE item_id = %s",
                       UUID(item.item_id)) == [(1,)]


@pytest.mark.parametrize("body, error", [
    ({"product": "no_such_product"}, UnknownProduct),
    ({"quantity": 1}, InvalidItem),  # the same plan
    ({}, InvalidItem),
])
async def test_bad_changes_are_refused_and_nothing_is_written(
        ledger: httpx.Client, recurring: RecurringItems, body: dict[str, Any],
        error: type[Exception]) -> None:
    first, _, _ = this_month()
    account = opened(ledger, credit="20.00")
    item = await add_number(recurring, account, first)
    with pytest.raises(error):
        await change(recurring, item, "bad", effective="now", **body)
    assert balance(ledger, account) == "16.00"
    assert await fetch(recurring.pool, "SELECT count(*) FROM recurring_plan_changes") == [(0,)]


async def test_a_cancelled_item_cannot_change(ledger: httpx.Client,
                                              recurring: RecurringItems) -> None:
    first, _, _ = this_month()
    account = opened(ledger, credit="20.00")
    item = await add_number(recurring, account, first)
    await recurring.cancel(UUID(item.item_id), "now", "ops")
    with pytest.raises(ItemCancelled):
        await change(recurring, item, "late", quantity=2, effective="now")
    assert balance(ledger, account) == "16.00"


async def test_a_postpay_change_shows_on_the_months_invoice_lines_once(
        ledger: httpx.Client, recurring: RecurringItems) -> None:
    first, today, days_in_month = this_month()
    account = str(uuid.uuid4())
    assert ledger.post("/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "postpay", "currency": "GBP", "credit_limit": "100.00",
        "tax": {"country": "GB"}}).status_code == 201
    item = await add_number(recurring, account, first)
    for _ in range(3):  # the first try and two retries
        changed, _ = await change(recurring, item, "to-keyword", product="shortcode_keyword",
                                  quantity=2, effective="now")
    assert changed.product == "shortcode_keyword" and len(changed.plan_changes) == 1
    # priced by the ledger from its catalogue at the time of the charge
    credit, charge = expected(today, days_in_month,
                              to_micros(changed.plan_changes[0].unit_price), 2)
    assert to_micros(changed.plan_changes[0].amount) == charge
    assert balance(ledger, account) == format_micros(-(4_000_000 - credit + charge))

    # the ledger's entry_posted of each fee (as the ledger publishes it and the invoicing
    # consumer applies it), built from the charges as the ledger answered them
    customers = Customers(recurring.pool)
    fees = await fetch(
        recurring.pool,
        "SELECT entry_id, product, quantity, unit_price, amount, charged_at"
        " FROM recurring_charges WHERE item_id = %s UNION ALL"
        " SELECT entry_id, to_product, to_quantity, unit_price, amount, created_at"
        " FROM recurring_plan_changes WHERE item_id = %s",
        UUID(item.item_id), UUID(item.item_id))
    assert len(fees) == 3
    for entry_id, product, quantity, unit_price, amount, at in fees:
        outcome = await customers.apply_entry(EntryPosted(
            entry_id=entry_id, account_id=UUID(account), kind="fee", amount=f"-{amount}",
            currency="GBP", balance_after="0.00", occurred_at=at, reference=item.reference,
            product=product, quantity=quantity, unit_price=unit_price))
        assert outcome in ("recorded", "duplicate")
    rows = await fetch(
        recurring.pool,
        "SELECT kind, product, unit_price_micros, period, reference, sum(quantity),"
        " sum(amount_micros) FROM usage_lines WHERE account_id = %s"
        " GROUP BY kind, product, unit_price_micros, period, reference", UUID(account))
    totals = [UsageTotal(product=r[1], unit_price_micros=r[2], period=r[3], quantity=int(r[5]),
                         amount_micros=int(r[6]), kind=r[0], reference=r[4]) for r in rows]
    lines = {(d.product, d.quantity): d.exact_net_micros
             for d in usage_drafts(totals, period_of(today))}
    used = VMN - credit
    expected_lines = {("vmn_setup", 1): VMN, ("shortcode_keyword", 2): charge}
    if used:
        expected_lines[("vmn", 1)] = used
    assert lines == expected_lines
    # the month costs the old plan's days and the new plan's, and the ledger agrees
    assert sum(lines.values()) == 4_000_000 - credit + charge
