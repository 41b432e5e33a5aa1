"""invoicingctl on real PostgreSQL: a billing run with its progress, the reconciliation
property (for random usage over random accounts, each account's invoice nets equal the
ledger's debits for the period within half a penny per line), a reconciliation that catches
a disagreement, and the accountant's CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from contracts.ledger import AccountTax, AccountUpdated, EntryPosted
from invoicing_service.app.customers import Customers
from invoicing_service.cli import app
from services.database import apply_migrations, create_pool
from tests.conftest import Infra
from tests.integration.invoicing_fixtures import query

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "invoicing_service" / "migrations"
_periods = (f"{year}-{month:02d}" for year in range(2015, 2020) for month in range(1, 13))
_counter = itertools.count(1)

line = st.tuples(st.sampled_from(["sms", "rcs_basic", "vmn", "ai"]),
                 st.integers(1, 50_000),  # quantity
                 st.integers(1, 250_000))  # unit price in micros: 0.000001 .. 0.25
account = st.tuples(st.sampled_from(["postpay", "postpay", "prepay"]),
                    st.sampled_from([("GB", None, "GBP"), ("DE", "DE136695976", "EUR"),
                                     ("US", None, "USD")]),
                    st.lists(line, min_size=1, max_size=6))


@pytest.fixture(scope="module")
def database_url(infra: Infra) -> str:
    apply_migrations(infra.database_url, "invoicing", MIGRATIONS)
    return infra.database_url


def feed(database_url: str, period: str, accounts: list[tuple[uuid.UUID, tuple]]) -> None:  # type: ignore[type-arg]
    """What the ledger would publish, applied as the service's subscriber applies it."""
    at = datetime(int(period[:4]), int(period[5:]), 12, tzinfo=UTC)

    async def main() -> None:
        pool = create_pool(database_url, "invoicing", max_size=2, name="test")
        await pool.open(wait=True)
        customers = Customers(pool)
        try:
            for account_id, (kind, (country, vat, currency), lines) in accounts:
                await customers.apply_account(AccountUpdated(
                    event_id=f"a:{account_id}", account_id=account_id, version=1,
                    account_type=kind, currency=currency, tier="starter",
                    billing_basis="submitted", credit_limit="100.00",
                    tax=AccountTax(country=country, vat_number=vat), closed=False,
                    occurred_at=at))
                for n, (product, quantity, price_micros) in enumerate(lines):
                    price = Decimal(price_micros) / 1_000_000
                    await customers.apply_entry(EntryPosted(
                        entry_id=str(uuid.uuid4()), account_id=account_id, kind="usage",
                        amount=f"-{price * quantity:f}", currency=currency,  # type: ignore[arg-type]
                        balance_after="0.00", occurred_at=at + timedelta(minutes=n),
                        product=product, quantity=quantity, unit_price=f"{price:f}"))
        finally:
            await pool.close()

    asyncio.run(main())


def billable(account: tuple) -> bool:  # type: ignore[type-arg]
    """A postpay account whose lines (per product and price) round to at least a penny."""
    kind, _, lines = account
    groups: dict[tuple[str, int], int] = {}
    for product, quantity, price_micros in lines:
        groups[(product, price_micros)] = groups.get((product, price_micros), 0) \
            + quantity * price_micros
    pence = sum(int((Decimal(micros) / 10_000).quantize(Decimal(1), "ROUND_HALF_UP"))
                for micros in groups.values())
    return kind == "postpay" and pence > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(account, min_size=1, max_size=4))
def test_invoice_nets_equal_the_ledgers_debits_for_random_usage(
    database_url: str, accounts: list[tuple],  # type: ignore[type-arg]
) -> None:
    period = next(_periods)
    feed(database_url, period, [(uuid.uuid4(), a) for a in accounts])
    runner = CliRunner()
    billed = runner.invoke(app, ["--database-url", database_url, "billing-run", period])
    assert billed.exit_code == 0, billed.output
    assert f"{sum(1 for a in accounts if billable(a))} invoices issued now" in billed.output
    checked = runner.invoke(app, ["--database-url", database_url, "reconcile", period, "--all"])
    assert checked.exit_code == 0, checked.output
    assert "0 mismatched" in checked.output


def test_reconciliation_catches_invoices_that_disagree_with_the_debits(database_url: str) -> None:
    period = next(_periods)
    account_id = uuid.uuid4()
    feed(database_url, period, [(account_id, ("postpay", ("GB", None, "GBP"),
                                             [("sms", 100, 39_500)]))])
    runner = CliRunner()
    assert runner.invoke(app, ["--database-url", database_url, "billing-run", period]).exit_code == 0
    # a debit the invoice does not reflect (as if the invoice had been built wrongly)
    query(database_url, "UPDATE invoicing.usage_lines SET amount_micros = amount_micros + 20000"
          " WHERE account_id = %s RETURNING 1", (account_id,))
    checked = runner.invoke(app, ["--database-url", database_url, "reconcile", period])
    assert checked.exit_code == 1, checked.output
    assert "1 mismatched" in checked.output


def test_a_current_period_is_refused_and_export_lists_the_months_documents(
    database_url: str,
) -> None:
    runner = CliRunner()
    now = datetime.now(UTC)
    refused = runner.invoke(app, ["--database-url", database_url, "billing-run",
                                  f"{now.year:04d}-{now.month:02d}"])
    assert refused.exit_code == 2
    exported = runner.invoke(app, ["--database-url", database_url, "export",
                                   f"{now.year:04d}-{now.month:02d}"])
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    numbers = {row["number"] for row in rows if row["document"] == "invoice"}
    issued = {r[0] for r in query(database_url, "SELECT number FROM invoicing.invoices WHERE"
                                  " issued_at >= date_trunc('month', now())")}
    assert numbers == issued and numbers


def test_a_documents_parties_come_from_the_billing_profile_and_the_supplier_settings(
    database_url: str,
) -> None:
    from invoicing_service.app.billing import run_id_of
    from invoicing_service.app.customers import BillingProfile
    from invoicing_service.app.documents import Documents, Party
    from invoicing_service.app.queries import InvoiceQueries

    period = next(_periods)
    account_id = uuid.uuid4()
    feed(database_url, period, [(account_id, ("postpay", ("DE", "DE136695976", "EUR"),
                                             [("sms", 1000, 52_000)]))])
    supplier = Party(name="Supplier Ltd", address_lines=("1 Road", "London"), country="GB",
                     vat_number="GB123456789")

    async def set_profile() -> None:
        pool = create_pool(database_url, "invoicing", max_size=2, name="test")
        await pool.open(wait=True)
        try:
            await Customers(pool).set_profile(account_id, BillingProfile(
                legal_name="Acme GmbH", address_lines=["Hauptstr. 1", "10115 Berlin"],
                billing_email="rechnung@acme.example", po_number="PO-9"))
        finally:
            await pool.close()

    asyncio.run(set_profile())
    assert CliRunner().invoke(app, ["--database-url", database_url, "billing-run",
                                    period]).exit_code == 0

    async def main() -> tuple[object, object]:
        pool = create_pool(database_url, "invoicing", max_size=2, name="test")
        await pool.open(wait=True)
        try:
            customers = Customers(pool)
            documents = Documents(InvoiceQueries(pool), customers, supplier)
            [(invoice_id,)] = query(database_url, "SELECT invoice_id FROM invoicing.invoices"
                                    " WHERE billing_run_id = %s", (run_id_of(period),))
            document = await documents.invoice(invoice_id, tenant_id=account_id)
            with pytest.raises(Exception, match="not found"):
                await documents.invoice(invoice_id, tenant_id=uuid.uuid4())
            return document.customer, document
        finally:
            await pool.close()

    customer, document = asyncio.run(main())
    assert customer == Party(name="Acme GmbH", address_lines=("Hauptstr. 1", "10115 Berlin"),
                             country="DE", vat_number="DE136695976",
                             email="rechnung@acme.example", po_number="PO-9")
    assert document.supplier == supplier  # type: ignore[attr-defined]
    assert document.view.vat_breakdown[0].vat_treatment == "reverse_charge"  # type: ignore[attr-defined]


def test_a_changed_billing_profile_is_announced_once_per_version(database_url: str) -> None:
    """invoicing.v1.customer_updated goes out in the profile's transaction, with the next
    version, only when the content changed; it carries the account's VAT number."""
    import msgspec

    from contracts.invoicing import CustomerUpdated
    from invoicing_service.app.customers import BillingProfile

    period = next(_periods)
    account_id = uuid.uuid4()
    feed(database_url, period, [(account_id, ("postpay", ("DE", "DE136695976", "EUR"), []))])
    first = BillingProfile(legal_name="Acme GmbH", address_lines=["Hauptstr. 1", "Berlin"],
                           billing_email="rechnung@acme.example")
    changed = BillingProfile(legal_name="Acme Holding GmbH", address_lines=["Hauptstr. 1"],
                             country="AT", billing_email="rechnung@acme.example")

    async def set_profiles() -> list[int]:
        pool = create_pool(database_url, "invoicing", max_size=2, name="test")
        await pool.open(wait=True)
        try:
            customers = Customers(pool)
            return [await customers.set_profile(account_id, profile)
                    for profile in (first, first, changed, changed)]
        finally:
            await pool.close()

    assert asyncio.run(set_profiles()) == [1, 1, 2, 2]
    rows = [(msg_id, msgspec.json.decode(bytes(payload), type=CustomerUpdated))
            for msg_id, payload in query(
                database_url, "SELECT msg_id, payload FROM invoicing.outbox WHERE subject ="
                " 'invoicing.v1.customer_updated' ORDER BY outbox_id")]
    rows = [(msg_id, m) for msg_id, m in rows if m.account_id == account_id]
    messages = [m for _, m in rows]
    assert [m.version for m in messages] == [1, 2]
    assert [msg_id for msg_id, _ in rows] == [m.event_id for m in messages]
    assert messages[0].legal_name == "Acme GmbH" and messages[0].country == "DE"
    assert messages[1].legal_name == "Acme Holding GmbH" and messages[1].country == "AT"
    assert {m.vat_number for m in messages} == {"DE136695976"}
