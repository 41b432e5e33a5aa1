"""Gap-free numbering on real PostgreSQL: two processes issuing at the same time, and an
issue that fails half-way, leave every series without a gap and without a duplicate."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from psycopg import Cursor
from psycopg.rows import DictRow

from invoicing_service.app.invoices import InvoiceOrder, Invoices
from invoicing_service.app.store import EmailRequest, InvoicingRecorder
from invoicing_service.domain.lines import UsageTotal, price, usage_drafts
from invoicing_service.domain.numbering import sequence_of
from invoicing_service.domain.vat import TaxProfile, terms_for
from invoicing_service.main import open_application
from services.database import apply_migrations
from tests.conftest import Infra
from tests.integration.invoicing_fixtures import query

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "invoicing_service" / "migrations"
ISSUES_PER_WORKER = 15


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> str:
    apply_migrations(infra.database_url, "invoicing", MIGRATIONS)
    return infra.database_url


@pytest.fixture
def invoices(database_url: str) -> Iterator[Invoices]:
    app = open_application(database_url)
    try:
        yield Invoices(app)
    finally:
        app.close()


def order(account: uuid.UUID | None = None) -> InvoiceOrder:
    lines = price(usage_drafts([UsageTotal("sms", 39_500, "2026-10", 10, 395_000)], "2026-10"),
                  terms_for(TaxProfile("GB")))
    return InvoiceOrder(invoice_id=uuid.uuid4(), account_id=account or uuid.uuid4(),
                        currency="GBP", period="2026-10", lines=lines)


def issue_many(database_url: str, count: int, start: multiprocessing.synchronize.Event) -> None:
    app = open_application(database_url)
    try:
        invoices = Invoices(app)
        start.wait(30)
        for _ in range(count):
            invoice = invoices.issue(order())
            credit = invoices.credit(invoice.id, 10_000, "concurrent credit", None)
            assert credit.number.startswith("CN-")
    finally:
        app.close()


def all_numbers(database_url: str, prefix: str) -> list[str]:
    rows = query(database_url, "SELECT number FROM invoicing.invoices WHERE number LIKE %s"
                 " UNION ALL SELECT number FROM invoicing.credit_notes WHERE number LIKE %s",
                 (f"{prefix}-%", f"{prefix}-%"))
    return [row[0] for row in rows]


def assert_gap_free(numbers: list[str]) -> None:
    by_series: dict[str, list[int]] = {}
    for number in numbers:
        series, sequence = sequence_of(number)
        by_series.setdefault(series, []).append(sequence)
    for series, sequences in by_series.items():
        assert sorted(sequences) == list(range(1, len(sequences) + 1)), series


def test_two_processes_issuing_at_once_share_each_series_without_gap_or_duplicate(
    database_url: str,
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=issue_many, args=(database_url, ISSUES_PER_WORKER, start))
               for _ in range(2)]
    before = len(all_numbers(database_url, "INV"))
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    invoices, notes = all_numbers(database_url, "INV"), all_numbers(database_url, "CN")
    assert len(invoices) == before + 2 * ISSUES_PER_WORKER
    assert len(set(invoices)) == len(invoices) and len(set(notes)) == len(notes)
    assert_gap_free(invoices)
    assert_gap_free(notes)


def test_an_issue_that_fails_half_way_takes_no_number(invoices: Invoices) -> None:
    first = invoices.issue(order())

    def crash(curs: Cursor[DictRow], emails: Sequence[EmailRequest]) -> None:
        raise RuntimeError("the process died inside the issue transaction")

    failing = order()
    seam = InvoicingRecorder.__dict__["enqueue_emails"]
    InvoicingRecorder.enqueue_emails = staticmethod(crash)  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError):
            invoices.issue(failing)
    finally:
        InvoicingRecorder.enqueue_emails = seam
    assert invoices.find(failing.invoice_id) is None
    after = invoices.issue(order())
    assert first.number is not None and after.number is not None
    assert sequence_of(after.number)[1] == sequence_of(first.number)[1] + 1
    again = invoices.issue(failing)  # the same order issued for real takes the next one
    assert again.number is not None
    assert sequence_of(again.number)[1] == sequence_of(after.number)[1] + 1


def test_the_same_invoice_issued_twice_is_issued_once(invoices: Invoices) -> None:
    same = order()
    first, second = invoices.issue(same), invoices.issue(same)
    assert first.number == second.number and second.version == first.version


def test_a_usage_line_is_billed_at_most_once_and_a_refused_issue_takes_no_number(
    invoices: Invoices, database_url: str,
) -> None:
    from invoicing_service.domain import errors

    entry, account = uuid.uuid4(), uuid.uuid4()
    query(database_url, "INSERT INTO invoicing.usage_lines (entry_id, account_id, currency,"
          " product, quantity, unit_price_micros, amount_micros, occurred_at, period)"
          " VALUES (%s, %s, 'GBP', 'sms', 10, 39500, 395000, '2026-10-02Z', '2026-10')"
          " RETURNING 1", (entry, account))
    first = order(account)
    issued = invoices.issue(_with_usage(first, entry))
    assert query(database_url, "SELECT invoiced_on FROM invoicing.usage_lines"
                 " WHERE entry_id = %s", (entry,)) == [(issued.id,)]
    again = _with_usage(order(account), entry)
    with pytest.raises(errors.InvoicingError):
        invoices.issue(again)
    assert invoices.find(again.invoice_id) is None
    following = invoices.issue(order())
    assert issued.number is not None and following.number is not None
    assert sequence_of(following.number)[1] == sequence_of(issued.number)[1] + 1


def _with_usage(base: InvoiceOrder, entry: uuid.UUID) -> InvoiceOrder:
    from dataclasses import replace

    return replace(base, billed_usage=[entry])
