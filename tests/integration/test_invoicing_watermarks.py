"""Billing runs bill usage by watermark (docs/invoicing.md, "Billing runs"), on real
PostgreSQL: each usage line is billed once, by the first run after it arrived that covers its
period, late lines become correction lines of the next invoice, runs of periods in any order
keep that, two issuers from the same read cannot both bill, and a line being recorded while a
run reads where arrivals stand is waited for, never skipped."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.http.invoicing import InvoiceView
from contracts.ledger import AccountTax, AccountUpdated, EntryPosted
from invoicing_service.app.billing import BillingRuns
from invoicing_service.app.customers import Customers
from invoicing_service.app.invoices import InvoiceOrder, Invoices
from invoicing_service.app.store import UsageWatermark
from invoicing_service.domain import errors
from invoicing_service.domain.lines import UsageTotal, price, usage_drafts
from invoicing_service.domain.numbering import sequence_of
from invoicing_service.domain.vat import TaxProfile, terms_for
from invoicing_service.main import open_application
from services.database import apply_migrations, conninfo, create_pool
from tests.conftest import Infra
from tests.integration.invoicing_fixtures import query

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "invoicing_service" / "migrations"
LATER = datetime(2099, 1, 15, tzinfo=UTC)  # every period of these tests is finished
_years = itertools.count(2030)


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> str:
    apply_migrations(infra.database_url, "invoicing", MIGRATIONS)
    return infra.database_url


@pytest.fixture(scope="module")
def invoices(database_url: str) -> Iterator[Invoices]:
    app = open_application(database_url)
    try:
        yield Invoices(app)
    finally:
        app.close()


class World:
    """Feeds accounts and usage as the ledger subscriber does, and runs billings."""

    def __init__(self, database_url: str, invoices: Invoices) -> None:
        self.database_url = database_url
        self.invoices = invoices

    def run(self, steps: Any) -> Any:
        async def main() -> Any:
            pool = create_pool(self.database_url, "invoicing", max_size=2, name="test")
            await pool.open(wait=True)
            try:
                customers = Customers(pool)
                runs = BillingRuns(pool, customers, self.invoices, clock=lambda: LATER,
                                   page_size=2)
                return await steps(customers, runs)
            finally:
                await pool.close()

        return asyncio.run(main())

    def open_accounts(self, accounts: list[uuid.UUID]) -> None:
        async def steps(customers: Customers, runs: BillingRuns) -> None:
            for account_id in accounts:
                await customers.apply_account(AccountUpdated(
                    event_id=f"a:{account_id}", account_id=account_id, version=1,
                    account_type="postpay", currency="GBP", tier="starter",
                    billing_basis="submitted", credit_limit="100.00",
                    tax=AccountTax(country="GB"), closed=False, occurred_at=LATER))

        self.run(steps)

    def use(self, account_id: uuid.UUID, period: str, quantity: int) -> str:
        """A usage line of `quantity` x 0.01 in `period`; returns its entry id."""
        entry_id = str(uuid.uuid4())
        at = datetime(int(period[:4]), int(period[5:]), 10, tzinfo=UTC) + timedelta(
            seconds=quantity)

        async def steps(customers: Customers, runs: BillingRuns) -> None:
            await customers.apply_entry(EntryPosted(
                entry_id=entry_id, account_id=account_id, kind="usage",
                amount=f"-{Decimal('0.01') * quantity:f}", currency="GBP",
                balance_after="0.00", occurred_at=at, product="sms", quantity=quantity,
                unit_price="0.01"))

        self.run(steps)
        return entry_id

    def bill(self, period: str) -> int:
        async def steps(customers: Customers, runs: BillingRuns) -> int:
            run_id, _ = await runs.create(period)
            return await runs.execute(run_id)

        return int(self.run(steps))

    def billed_by(self, accounts: list[uuid.UUID]) -> dict[str, uuid.UUID | None]:
        return {str(entry): invoice for entry, invoice in query(
            self.database_url, "SELECT entry_id, billed_by FROM invoicing.usage_lines_billing"
            " WHERE account_id = ANY(%s)", (accounts,))}

    def invoices_of(self, accounts: list[uuid.UUID]) -> dict[uuid.UUID, InvoiceView]:
        return {row[0]: msgspec.json.decode(row[1], type=InvoiceView) for row in query(
            self.database_url, "SELECT invoice_id, view FROM invoicing.invoices"
            " WHERE account_id = ANY(%s)", (accounts,))}


def test_late_usage_goes_on_the_next_invoice_as_a_correction_in_any_run_order(
    database_url: str, invoices: Invoices,
) -> None:
    world = World(database_url, invoices)
    year = next(_years)
    sep, oct_, nov = f"{year}-09", f"{year}-10", f"{year}-11"
    account = uuid.uuid4()
    world.open_accounts([account])
    on_time = [world.use(account, sep, 1), world.use(account, oct_, 2)]
    early_nov = world.use(account, nov, 3)  # already there when October is billed
    world.bill(oct_)
    late_sep, late_oct = world.use(account, sep, 4), world.use(account, oct_, 5)
    nov_line = world.use(account, nov, 6)
    world.bill(sep)  # bills the late September line only
    world.bill(nov)  # the late October line, and November
    by = world.billed_by([account])
    views = world.invoices_of([account])
    period_of = {invoice_id: view.period for invoice_id, view in views.items()}
    assert len(views) == 3
    assert {entry: period_of[by[entry]] for entry in by} == {  # type: ignore[index]
        on_time[0]: oct_, on_time[1]: oct_, early_nov: nov, late_sep: sep, late_oct: nov,
        nov_line: nov}
    november = next(view for view in views.values() if view.period == nov)
    lines = {(line.period, line.quantity, line.correction) for line in november.lines}
    assert lines == {(oct_, 5, True), (nov, 9, False)}
    assert world.bill(nov) == 0  # a completed run issues nothing more


def test_two_issuers_from_the_same_read_cannot_both_bill(
    database_url: str, invoices: Invoices,
) -> None:
    account = uuid.uuid4()
    lines = price(usage_drafts([UsageTotal("sms", 10_000, "2026-10", 10, 100_000)], "2026-10"),
                  terms_for(TaxProfile("GB")))

    def order() -> InvoiceOrder:
        return InvoiceOrder(invoice_id=uuid.uuid4(), account_id=account, currency="GBP",
                            period="2026-10", lines=lines,
                            billed_through=UsageWatermark(10, "2026-10", previous_id=0))

    first = invoices.issue(order())
    second = order()
    with pytest.raises(errors.InvoicingError):
        invoices.issue(second)  # followed the same (no) watermark: refused, no number taken
    assert invoices.find(second.invoice_id) is None
    following = invoices.issue(InvoiceOrder(invoice_id=uuid.uuid4(), account_id=uuid.uuid4(),
                                            currency="GBP", period="2026-10", lines=lines))
    assert first.number is not None and following.number is not None
    assert sequence_of(following.number)[1] == sequence_of(first.number)[1] + 1


def test_a_run_waits_for_a_line_being_recorded_instead_of_skipping_it(
    database_url: str,
) -> None:
    url = conninfo(database_url)
    with psycopg.connect(url) as recording:
        recording.execute(
            "INSERT INTO invoicing.usage_lines (entry_id, account_id, currency, product,"
            " quantity, unit_price_micros, amount_micros, occurred_at, period)"
            " VALUES (%s, %s, 'GBP', 'sms', 1, 10000, 10000, '2026-10-02Z', '2026-10')",
            (uuid.uuid4(), uuid.uuid4()))
        seq = recording.execute("SELECT currval('invoicing.usage_lines_seq')").fetchone()
        assert seq is not None
        read: list[int] = []
        reader = threading.Thread(target=lambda: read.append(_arrived_through(url)))
        reader.start()
        # The reader waits on the intake gate while the line is uncommitted.
        while not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type"
                        " = 'Lock' AND wait_event = 'advisory' AND query LIKE"
                        " '%%usage_arrived_through%%'"):
            assert reader.is_alive()
        assert not read
        recording.commit()
        reader.join(30)
    assert read and read[0] >= seq[0]


def _arrived_through(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT invoicing.usage_arrived_through()").fetchone()
        assert row is not None
        return int(row[0])


# Steps: record a line (account, month, quantity), or run a month's billing (once per month).
step = st.one_of(
    st.tuples(st.just("use"), st.integers(0, 2), st.integers(0, 3), st.integers(1, 9)),
    st.tuples(st.just("bill"), st.just(0), st.integers(0, 3), st.just(0)),
)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=14))
def test_every_line_is_billed_once_by_the_first_run_that_covers_it(
    database_url: str, invoices: Invoices, steps: list[tuple[str, int, int, int]],
) -> None:
    world = World(database_url, invoices)
    year = next(_years)
    months = [f"{year}-{month:02d}" for month in (3, 4, 5, 6)]
    accounts = [uuid.uuid4() for _ in range(3)]
    world.open_accounts(accounts)
    expected: dict[str, str] = {}  # entry -> the period of the run that must bill it
    waiting: list[tuple[str, str]] = []  # (entry, its period) not billed yet
    billed_months: set[str] = set()
    quantities: dict[str, int] = {}
    for kind, account, month, quantity in steps:
        if kind == "use":
            entry = world.use(accounts[account], months[month], quantity)
            waiting.append((entry, months[month]))
            quantities[entry] = quantity
        elif months[month] not in billed_months:
            period = months[month]
            billed_months.add(period)
            world.bill(period)
            for entry, line_period in list(waiting):
                if line_period <= period:
                    expected[entry] = period
                    waiting.remove((entry, line_period))
    by = world.billed_by(accounts)
    views = world.invoices_of(accounts)
    assert {entry: views[invoice].period for entry, invoice in by.items()
            if invoice is not None} == expected
    assert {entry for entry, invoice in by.items() if invoice is None} == {e for e, _ in waiting}
    # What each invoice prints is exactly the lines attributed to it: none counted twice.
    period_of = dict(query(database_url, "SELECT entry_id::text, period FROM"
                           " invoicing.usage_lines WHERE account_id = ANY(%s)", (accounts,)))
    for invoice_id, view in views.items():
        printed: dict[tuple[str | None, bool], int] = {}
        for line in view.lines:
            key = (line.period, line.correction)
            printed[key] = printed.get(key, 0) + line.quantity
        attributed: dict[tuple[str | None, bool], int] = {}
        for entry, invoice in by.items():
            if invoice == invoice_id:
                line_period = period_of[entry]
                key = (line_period, line_period != view.period)
                attributed[key] = attributed.get(key, 0) + quantities[entry]
        assert printed == attributed


def test_a_line_recorded_while_a_run_reads_is_numbered_after_what_the_run_read(
    database_url: str,
) -> None:
    url = conninfo(database_url)
    with psycopg.connect(url) as run:
        row = run.execute("SELECT invoicing.usage_arrived_through()").fetchone()
        assert row is not None  # the gate is held until this transaction ends
        inserted: list[int] = []

        def record() -> None:
            with psycopg.connect(url) as conn:
                got = conn.execute(
                    "INSERT INTO invoicing.usage_lines (entry_id, account_id, currency, product,"
                    " quantity, unit_price_micros, amount_micros, occurred_at, period)"
                    " VALUES (%s, %s, 'GBP', 'sms', 1, 10000, 10000, '2026-10-02Z', '2026-10')"
                    " RETURNING seq", (uuid.uuid4(), uuid.uuid4())).fetchone()
                assert got is not None
                inserted.append(int(got[0]))

        recorder = threading.Thread(target=record)
        recorder.start()
        while not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type"
                        " = 'Lock' AND wait_event = 'advisory' AND query LIKE"
                        " 'INSERT INTO invoicing.usage_lines%%'"):
            assert recorder.is_alive()
        # Waiting on the gate, it has not drawn its number yet.
        last = run.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                           " FROM invoicing.usage_lines_seq").fetchone()
        assert last is not None and last[0] == row[0]
        run.commit()
        recorder.join(30)
    assert inserted and inserted[0] > row[0]
