"""billing_run: a month's billing run over many postpay accounts.

Target (issue 10): 10,000 postpay accounts and 1,000,000 usage lines in the month; the
issue phase at >= 1,000 invoices/s on this machine; peak memory that does not grow with the
number of accounts (the run streams accounts a page at a time).

Set-up (not measured): accounts and rated usage lines are written straight into invoicing's
tables with COPY, as the ledger-events subscriber would have left them.

Measured, in this process against the machine's PostgreSQL:
- raw baseline: the same walk over accounts (a page at a time) with the same arrival read,
  grouped usage query and, per page, one INSERT of the invoice rows and one of the
  watermark rows, in one transaction: the floor of the database work without the domain,
  the event store, the read model or the outbox;
- the run: ``BillingRuns.execute`` exactly as the service runs it (per page: customers,
  VAT terms, grouped usage, priced lines; then one event-store save of the page's invoices
  with the number claim, watermarks, read-model rows and outbox messages in one
  transaction, while the next page is read).

Reported: invoices/s, CPU per invoice (this process, and PostgreSQL's backends), the
resident set size at 10% of the run and at its end (flat when streaming), PDFs/s of the
first issued invoices rendered in this process (and per CPU second, i.e. per core), and a
verification (one invoice per account, every line billed once by its own account's invoice,
numbers without a gap).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench import infra
from bench.cpu import CpuMeter
from bench.options import RunOptions
from invoicing_service.app import billing as billing_sql
from invoicing_service.app.billing import BillingRuns
from invoicing_service.app.customers import Customers
from invoicing_service.app.invoices import Invoices
from invoicing_service.app.store import open_event_store
from services.database import apply_migrations, conninfo, create_pool

NAME = "billing_run"
DATABASE = "billing_bench_invoicing"  # not billing_bench: other benchmarks recreate that one
MIGRATIONS = Path(__file__).resolve().parents[1] / "invoicing_service" / "migrations"
PERIOD = "2026-10"
ACCOUNTS_FULL, LINES_FULL = 10_000, 1_000_000
ACCOUNTS_QUICK, LINES_QUICK = 500, 50_000
PRODUCTS = (("sms", 39_500), ("rcs_basic", 52_000), ("vmn", 1_500_000), ("ai", 2_500))
TARGET_INVOICES_PER_S = 1_000.0
PAGE_SIZE = 200  # the service's default billing_run_page_size


def rss_mib(field: str = "VmRSS") -> float:
    """Resident set size now (VmRSS), or the process's peak so far (VmHWM)."""
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def populate(url: str, accounts: int, lines: int) -> list[uuid.UUID]:
    """Postpay accounts (one in four a German business, reverse-charged) and usage lines."""
    ids = sorted(uuid.uuid4() for _ in range(accounts))
    start = datetime(2026, 10, 1, tzinfo=UTC)
    with psycopg.connect(conninfo(url)) as conn, conn.cursor() as cur:
        with cur.copy("COPY invoicing.accounts (account_id, version, account_type, currency,"
                      " country, vat_number, reverse_charge, closed, name, updated_at)"
                      " FROM STDIN") as copy:
            for n, account_id in enumerate(ids):
                german = n % 4 == 0
                copy.write_row((account_id, 1, "postpay", "EUR" if german else "GBP",
                                "DE" if german else "GB", "DE136695976" if german else None,
                                german, False, f"Customer {n}", start))
        with cur.copy("COPY invoicing.usage_lines (entry_id, account_id, currency, product,"
                      " quantity, unit_price_micros, amount_micros, occurred_at, period)"
                      " FROM STDIN") as copy:
            for n in range(lines):
                account_index = n % accounts
                product, price = PRODUCTS[n % len(PRODUCTS)]
                quantity = 1 + n % 7
                copy.write_row((uuid.uuid4(), ids[account_index],
                                "EUR" if account_index % 4 == 0 else "GBP", product, quantity,
                                price, quantity * price,
                                start + timedelta(seconds=n % 2_600_000), PERIOD))
    # Both measured passes then start from the same state: statistics, hint bits and the
    # visibility map are set, instead of the first pass paying for them.
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE invoicing.accounts")
        conn.execute("VACUUM ANALYZE invoicing.usage_lines")
    return ids


async def raw_baseline(url: str) -> dict[str, Any]:
    """The same walk and the same writes in plain SQL, a page per transaction: the arrival
    number read under the intake gate, the page of accounts with unbilled usage, the grouped
    usage query, one row per invoice and one watermark row per invoice. No domain, no event
    store, no read model or outbox. Its rows go to tables of its own, dropped afterwards."""
    pool = create_pool(url, "invoicing", max_size=4, name="bench-raw")
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS raw_invoices (invoice_id uuid PRIMARY"
                               " KEY, account_id uuid, currency text, net bigint)")
            await conn.execute("CREATE TABLE IF NOT EXISTS raw_watermarks (invoice_id uuid"
                               " PRIMARY KEY, account_id uuid, currency text, through_seq bigint,"
                               " through_period text, previous_id bigint)")
        started = time.perf_counter()
        after, invoices = uuid.UUID(int=0), 0
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT usage_arrived_through()")
                through = int((await cur.fetchone() or (0,))[0])
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(billing_sql.ACCOUNTS_PAGE, {
                    "after": after, "period": PERIOD, "through": through, "limit": PAGE_SIZE})
                page = [row[0] for row in await cur.fetchall()]
                if not page:
                    break
                cur = await conn.execute(billing_sql.PAGE_USAGE, {
                    "accounts": page, "period": PERIOD, "through": through})
                nets: dict[tuple[uuid.UUID, str], int] = {}
                heads: dict[tuple[uuid.UUID, str], int] = {}
                for row in await cur.fetchall():
                    key = (row[0], row[1])
                    nets[key] = nets.get(key, 0) + int(row[8])
                    heads[key] = int(row[9])
                ids = {key: uuid.uuid4() for key in nets}
                await conn.execute(
                    "INSERT INTO raw_invoices SELECT * FROM unnest(%s::uuid[], %s::uuid[],"
                    " %s::text[], %s::bigint[])",
                    ([ids[k] for k in nets], [k[0] for k in nets], [k[1] for k in nets],
                     list(nets.values())))
                await conn.execute(
                    "INSERT INTO raw_watermarks SELECT i, a, c, %s, %s, p FROM unnest("
                    "%s::uuid[], %s::uuid[], %s::text[], %s::bigint[]) AS t(i, a, c, p)",
                    (through, PERIOD, [ids[k] for k in nets], [k[0] for k in nets],
                     [k[1] for k in nets], [heads[k] for k in nets]))
                invoices += len(nets)
            after = page[-1]
        elapsed = time.perf_counter() - started
        async with pool.connection() as conn:
            await conn.execute("DROP TABLE raw_invoices, raw_watermarks")
        return {"invoices": invoices, "seconds": round(elapsed, 2),
                "invoices_per_s": round(invoices / elapsed, 1)}
    finally:
        await pool.close()


async def billing(url: str, accounts: int) -> dict[str, Any]:
    invoices = Invoices(await asyncio.to_thread(open_event_store, url, "invoicing"))
    pool = create_pool(url, "invoicing", max_size=4, name="bench-run")
    await pool.open(wait=True)
    runs = BillingRuns(pool, Customers(pool), invoices, page_size=PAGE_SIZE)
    rss_samples: dict[str, float] = {"before": round(rss_mib(), 1)}
    done = 0

    async def progress(count: int) -> None:
        nonlocal done
        done += count
        if done >= accounts // 10 and "at_10_percent" not in rss_samples:
            rss_samples["at_10_percent"] = round(rss_mib(), 1)

    meter = CpuMeter({"bench_process": lambda: [os.getpid()],
                      "postgres_backends": lambda: infra.backend_pids(url, DATABASE)})
    try:
        run_id, _ = await runs.create(PERIOD)
        meter.start()
        started = time.perf_counter()
        issued = await runs.execute(run_id, on_progress=progress)
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        rss_samples["at_end"] = round(rss_mib(), 1)
        rss_samples["peak"] = round(rss_mib("VmHWM"), 1)
    finally:
        await pool.close()
        invoices.close()
    per_invoice = {name: round(seconds / max(issued, 1) * 1_000, 3)
                   for name, seconds in cpu.cpu_s_by_group.items()}
    return {"invoices": issued, "seconds": round(elapsed, 2),
            "invoices_per_s": round(issued / elapsed, 1),
            "cpu_ms_per_invoice": per_invoice, "cpu": cpu.as_dict(), "rss_mib": rss_samples}


PDF_SAMPLE = 300


def render_pdfs(url: str) -> dict[str, Any]:
    """PDFs of issued invoices, rendered as the document issuer renders them (one process,
    one core): the run's first invoices, each with its customer from the accounts table."""
    import msgspec

    from contracts.http.invoicing import InvoiceView
    from invoicing_service.documents import Party, render_invoice_pdf

    supplier = Party(name="Example Messaging Ltd", address_lines=("1 Example Street", "London"),
                     country="GB", vat_number="GB000000000")
    with psycopg.connect(conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT i.view, a.name, a.country, a.vat_number FROM invoicing.invoices i"
            " JOIN invoicing.accounts a USING (account_id) ORDER BY i.seq LIMIT %s",
            (PDF_SAMPLE,)).fetchall()
    documents = [(msgspec.json.decode(view, type=InvoiceView),
                  Party(name=name, address_lines=("2 Customer Road",), country=country,
                        vat_number=vat_number)) for view, name, country, vat_number in rows]
    cpu_started, started = time.process_time(), time.perf_counter()
    sizes = [len(render_invoice_pdf(view, supplier, customer)) for view, customer in documents]
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - started
    return {"pdfs": len(sizes), "seconds": round(wall_s, 2),
            "pdfs_per_s": round(len(sizes) / wall_s, 1),
            "pdfs_per_cpu_s": round(len(sizes) / cpu_s, 1),
            "cpu_ms_per_pdf": round(cpu_s / max(len(sizes), 1) * 1_000, 2),
            "mean_bytes": round(sum(sizes) / max(len(sizes), 1))}


def verify(url: str, accounts: int) -> dict[str, Any]:
    with psycopg.connect(conninfo(url)) as conn:
        per_account = conn.execute("SELECT count(DISTINCT account_id), count(*) FROM"
                                   " invoicing.invoices").fetchone()
        # Which invoice billed each line (the watermark that covers it); it must be an
        # invoice of the line's own account and currency.
        unbilled = conn.execute(
            "SELECT count(*) FILTER (WHERE b.billed_by IS NULL),"
            " count(*) FILTER (WHERE i.account_id <> b.account_id OR i.currency <> b.currency)"
            " FROM invoicing.usage_lines_billing b"
            " LEFT JOIN invoicing.invoices i ON i.invoice_id = b.billed_by").fetchone()
        numbers = [int(r[0].rsplit("-", 1)[1]) for r in conn.execute(
            "SELECT number FROM invoicing.invoices").fetchall()]
    assert per_account is not None and unbilled is not None
    gap_free = sorted(numbers) == list(range(1, len(numbers) + 1))
    ok = per_account[0] == per_account[1] == accounts and unbilled == (0, 0) and gap_free
    return {"ok": ok, "accounts_invoiced": per_account[0], "invoices": per_account[1],
            "usage_lines_unbilled": unbilled[0], "usage_lines_on_another_accounts_invoice":
            unbilled[1], "numbers_gap_free": gap_free}


def run(options: RunOptions) -> dict[str, Any]:
    accounts, lines = (ACCOUNTS_QUICK, LINES_QUICK) if options.quick else (ACCOUNTS_FULL, LINES_FULL)
    url = infra.recreate_database(DATABASE)
    apply_migrations(url, "invoicing", MIGRATIONS)
    started = time.perf_counter()
    populate(url, accounts, lines)
    populate_s = time.perf_counter() - started
    print(f"billing_run: {accounts:,} accounts, {lines:,} usage lines written in"
          f" {populate_s:.1f} s", flush=True)
    baseline = asyncio.run(raw_baseline(url))
    print(f"billing_run: raw baseline {baseline['invoices_per_s']:,} invoices/s", flush=True)
    measured = asyncio.run(billing(url, accounts))
    print(f"billing_run: run {measured['invoices_per_s']:,} invoices/s,"
          f" {measured['cpu_ms_per_invoice']} CPU ms per invoice, RSS {measured['rss_mib']} MiB",
          flush=True)
    pdfs = render_pdfs(url)
    print(f"billing_run: PDFs {pdfs['pdfs_per_s']:,}/s ({pdfs['pdfs_per_cpu_s']:,} per CPU"
          f" second, {pdfs['cpu_ms_per_pdf']} ms each)", flush=True)
    verification = verify(url, accounts)
    return {
        "benchmark": NAME, "accounts": accounts, "usage_lines": lines,
        "populate_s": round(populate_s, 1), "raw_baseline": baseline, "run": measured,
        "pdfs": pdfs,
        "target_invoices_per_s": TARGET_INVOICES_PER_S,
        "target_met": measured["invoices_per_s"] >= TARGET_INVOICES_PER_S,
        "verification": verification,
    }
