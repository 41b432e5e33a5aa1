"""Billing runs: a month's invoices for every postpay account, resumable after a crash.

A run is one row per period (its primary key is `run-YYYY-MM`, the period unique), so two
requests for the same period make one run. The run walks postpay accounts with unbilled
usage in account-id order, a page at a time (never all accounts in memory): a page's
invoices are issued in one transaction (consecutive numbers, one usage watermark per
invoice instead of a mark on every usage line it bills, read model and outbox rows), then
the run records the page's last account; the next page is read while this one is issued.
Each invoice's id is derived from (run, account, currency), so a run restarted after a
crash re-visits at most one page, whose invoices, if they committed, are found by id and not
issued again; no account is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

import structlog
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import BillingRunView
from invoicing_service.app.customers import Customer, Customers
from invoicing_service.app.invoices import InvoiceOrder, Invoices, utcnow
from invoicing_service.app.store import UsageWatermark
from invoicing_service.domain import errors
from invoicing_service.domain.lines import UsageTotal, price, usage_drafts
from invoicing_service.domain.vat import NoRegistryCheck, VatNumberCheck, terms_for

log = structlog.get_logger(__name__)

RUN_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://billing.example/invoicing/billing-runs")
ACCOUNTS_PAGE_SIZE: Final = 200
NO_ACCOUNT: Final = UUID(int=0)


# Usage lines of account `a` not billed yet, of periods up to %(period)s, arrived up to
# %(through)s. A line is billed when a per-line mark (the old design) or a watermark of its
# account and currency covers it (its arrival number and period at most the watermark's).
# The lines to look at are bounded by the account's last watermark (its head): lines that
# arrived after it, lines of later periods than it, and lines of any other currency than the
# account's (the ledger never changes an account's currency: normally none). Everything else
# is covered by the head, so the walk costs what arrived since the last run, not the history.
_CANDIDATES = """
SELECT u.* FROM usage_lines u WHERE u.account_id = a.account_id AND u.currency = a.currency
   AND u.seq > coalesce(h.through_seq, 0) AND u.seq <= %(through)s
UNION ALL
SELECT u.* FROM usage_lines u WHERE u.account_id = a.account_id AND u.currency = a.currency
   AND u.seq <= h.through_seq AND u.period > h.through_period AND u.period <= %(period)s
UNION ALL
SELECT u.* FROM usage_lines u WHERE u.account_id = a.account_id AND u.currency < a.currency
   AND u.seq <= %(through)s
UNION ALL
SELECT u.* FROM usage_lines u WHERE u.account_id = a.account_id AND u.currency > a.currency
   AND u.seq <= %(through)s
"""
_HEAD = """
SELECT w.through_seq, w.through_period FROM usage_watermarks w
 WHERE w.account_id = a.account_id AND w.currency = a.currency
 ORDER BY w.watermark_id DESC LIMIT 1
"""
_NOT_COVERED = """
u.period <= %(period)s AND u.invoiced_on IS NULL AND NOT EXISTS (
    SELECT 1 FROM usage_watermarks w WHERE w.account_id = u.account_id
       AND w.currency = u.currency AND w.through_seq >= u.seq AND w.through_period >= u.period)
"""
UNBILLED = (f"SELECT 1 FROM (SELECT 1) one LEFT JOIN LATERAL ({_HEAD}) h ON true"  # noqa: S608
             f" CROSS JOIN LATERAL ({_CANDIDATES}) u WHERE {_NOT_COVERED}")
# The next page of postpay accounts with unbilled usage, in account-id order.
ACCOUNTS_PAGE = ("SELECT a.account_id FROM accounts a WHERE a.account_type = 'postpay'"  # noqa: S608
                 f" AND a.account_id > %(after)s AND EXISTS ({UNBILLED} LIMIT 1)"
                 " ORDER BY a.account_id LIMIT %(limit)s")
ACCOUNTS_TO_BILL = ("SELECT count(*) FROM accounts a WHERE a.account_type = 'postpay'"  # noqa: S608
                    f" AND EXISTS ({UNBILLED} LIMIT 1)")
# A page's unbilled usage grouped into lines, with the head watermark of each account and
# currency (0: none), which the invoice's watermark must follow.
PAGE_USAGE = f"""
SELECT g.*, coalesce((SELECT w.watermark_id FROM usage_watermarks w
                       WHERE w.account_id = g.account_id AND w.currency = g.currency
                       ORDER BY w.watermark_id DESC LIMIT 1), 0)
  FROM (SELECT u.account_id, u.currency, u.kind, u.product, u.unit_price_micros, u.period,
               u.reference, sum(u.quantity), sum(u.amount_micros)
          FROM accounts a LEFT JOIN LATERAL ({_HEAD}) h ON true
         CROSS JOIN LATERAL ({_CANDIDATES}) u
         WHERE a.account_id = ANY(%(accounts)s) AND {_NOT_COVERED}
         GROUP BY u.account_id, u.currency, u.kind, u.product, u.unit_price_micros, u.period,
                  u.reference) g
"""  # noqa: S608


async def _arrived_through(conn: AsyncConnection[Any]) -> int:
    """The arrival number up to which every usage line has committed (waits an instant for
    lines being recorded now; the intake gate's lock is released when this commits)."""
    cur = await conn.execute("SELECT usage_arrived_through()")
    row = await cur.fetchone()
    await conn.commit()
    return int(row[0]) if row else 0


def run_id_of(period: str) -> str:
    return f"run-{period}"


def invoice_id_for(run_id: str, account_id: UUID, currency: str) -> UUID:
    return uuid5(RUN_NAMESPACE, f"{run_id}:{account_id}:{currency}")


def check_billable(period: str, now: datetime) -> None:
    """A run bills a finished month only: the current month (or a later one) is refused."""
    current = f"{now.astimezone(UTC).year:04d}-{now.astimezone(UTC).month:02d}"
    if period >= current:
        raise errors.PeriodNotBillable(
            f"period {period} is not finished (the current period is {current})")


def previous_period(now: datetime) -> str:
    utc = now.astimezone(UTC)
    year, month = (utc.year, utc.month - 1) if utc.month > 1 else (utc.year - 1, 12)
    return f"{year:04d}-{month:02d}"


ProgressHook = Callable[[int], Awaitable[None]]


class BillingRuns:
    def __init__(self, pool: AsyncConnectionPool, customers: Customers, invoices: Invoices, *,
                 registry: VatNumberCheck | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 page_size: int = ACCOUNTS_PAGE_SIZE) -> None:
        assert 1 <= page_size <= 10_000
        self.pool = pool
        self.customers = customers
        self.invoices = invoices
        self.registry = registry or NoRegistryCheck()
        self.clock = clock
        self.page_size = page_size
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ commands

    async def request(self, period: str) -> tuple[BillingRunView, bool]:
        """The run of `period`, created if new (True) and started in the background."""
        run_id, created = await self.create(period)
        view = await self.view(run_id)
        if view.status in ("pending", "running"):
            self.spawn(run_id)
        return view, created

    async def create(self, period: str) -> tuple[str, bool]:
        """The run of a finished period: (its id, whether this call created it)."""
        check_billable(period, self.clock())
        run_id = run_id_of(period)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO billing_runs (billing_run_id, period, status, started_at)"
                " VALUES (%s, %s, 'pending', %s) ON CONFLICT (period) DO NOTHING",
                (run_id, period, self.clock()))
            return run_id, cur.rowcount == 1

    async def claim_request_key(self, key: str, digest: str) -> None:
        """An Idempotency-Key names one request: the same key with another period is 409.
        (The run itself is idempotent per period whatever the key.)"""
        async with self.pool.connection() as conn:
            await conn.execute("INSERT INTO idempotency_keys (scope, key, request_hash)"
                               " VALUES ('billing-run', %s, %s) ON CONFLICT DO NOTHING",
                               (key, digest))
            cur = await conn.execute("SELECT request_hash FROM idempotency_keys"
                                     " WHERE scope = 'billing-run' AND key = %s", (key,))
            row = await cur.fetchone()
        if row is None or row[0] != digest:
            raise errors.IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used with another request")

    def spawn(self, run_id: str) -> None:
        """Run in the background unless this process already runs it."""
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            return
        self._tasks[run_id] = asyncio.create_task(self._run_logged(run_id),
                                                  name=f"billing-run:{run_id}")

    async def resume_unfinished(self) -> list[str]:
        """On start-up: continue every run a previous process left pending or running."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT billing_run_id FROM billing_runs WHERE status IN ('pending', 'running')"
                " ORDER BY period")
            run_ids = [row[0] for row in await cur.fetchall()]
        for run_id in run_ids:
            self.spawn(run_id)
        return run_ids

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def wait(self, run_id: str) -> None:
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    # ------------------------------------------------------------------ the run

    async def _run_logged(self, run_id: str) -> None:
        try:
            await self.execute(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Left 'running': the next start resumes it; an operator sees the error.
            log.exception("invoicing.billing_run_failed", billing_run_id=run_id)
            async with self.pool.connection() as conn:
                await conn.execute("UPDATE billing_runs SET error = %s WHERE billing_run_id = %s",
                                   (f"{type(exc).__name__}: {exc}"[:500], run_id))

    async def execute(self, run_id: str, on_progress: ProgressHook | None = None) -> int:
        """Bill every postpay account of the run's period; returns invoices issued now."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE billing_runs SET status = 'running', error = NULL"
                " WHERE billing_run_id = %s AND status IN ('pending', 'running')"
                " RETURNING period, last_account", (run_id,))
            row = await cur.fetchone()
        if row is None:
            return 0  # completed already (or unknown)
        period, after = row[0], row[1] or NO_ACCOUNT
        log.info("invoicing.billing_run_started", billing_run_id=run_id, period=period,
                 after=str(after))
        issued = 0
        # The next page is read (accounts, usage, lines priced) while this one is issued:
        # pages of other accounts do not depend on each other. Pages are still issued one
        # after the other, so numbers follow account order and progress is recorded in order.
        reading = asyncio.create_task(self._read_page(run_id, period, after))
        try:
            while True:
                page, orders = await reading
                if not page:
                    break
                reading = asyncio.create_task(self._read_page(run_id, period, page[-1]))
                issued += len(await asyncio.to_thread(self.invoices.issue_batch, orders))
                if on_progress is not None:
                    await on_progress(len(page))
                after = page[-1]
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "UPDATE billing_runs SET last_account = %s,"
                        " accounts_done = accounts_done + %s WHERE billing_run_id = %s",
                        (after, len(page), run_id))
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE billing_runs SET status = 'completed', completed_at = %s"
                " WHERE billing_run_id = %s", (self.clock(), run_id))
        log.info("invoicing.billing_run_completed", billing_run_id=run_id, issued_now=issued)
        return issued

    async def accounts_to_bill(self, period: str) -> int:
        async with self.pool.connection() as conn:
            through = await _arrived_through(conn)
            cur = await conn.execute(ACCOUNTS_TO_BILL, {"period": period, "through": through})
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _accounts_page(self, period: str, after: UUID) -> tuple[list[UUID], int]:
        """The next page of accounts with unbilled usage, and the arrival number up to which
        this page bills (every line numbered up to it has committed)."""
        async with self.pool.connection() as conn:
            through = await _arrived_through(conn)
        async with self.pool.connection() as conn:
            cur = await conn.execute(ACCOUNTS_PAGE, {"after": after, "period": period,
                                                     "through": through,
                                                     "limit": self.page_size})
            return [row[0] for row in await cur.fetchall()], through

    async def _read_page(self, run_id: str, period: str,
                         after: UUID) -> tuple[list[UUID], list[InvoiceOrder]]:
        page, through = await self._accounts_page(period, after)
        if not page:
            return page, []
        return page, await self.page_orders(run_id, period, page, through)

    async def bill_page(self, run_id: str, period: str, account_ids: list[UUID],
                        through: int) -> int:
        """One invoice per account and currency of the page's unbilled usage up to the
        period (lines arrived up to `through`), all issued in one transaction; returns how
        many were issued now."""
        orders = await self.page_orders(run_id, period, account_ids, through)
        return len(await asyncio.to_thread(self.invoices.issue_batch, orders))

    async def page_orders(self, run_id: str, period: str, account_ids: list[UUID],
                          through: int) -> list[InvoiceOrder]:
        """The invoices of a page: its customers, its unbilled usage grouped into lines,
        priced (not issued yet)."""
        customers = await self.customers.customers(account_ids)
        usage: dict[tuple[UUID, str], tuple[list[UsageTotal], int]] = {}
        async with self.pool.connection() as conn:
            cur = conn.cursor()
            await cur.execute(PAGE_USAGE, {"accounts": account_ids, "period": period,
                                            "through": through})
            for (account_id, currency, kind, product, unit_price, line_period, reference,
                 quantity, amount, previous_id) in await cur.fetchall():
                totals, _ = usage.setdefault((account_id, currency), ([], int(previous_id)))
                totals.append(UsageTotal(product=product, unit_price_micros=int(unit_price),
                                         period=line_period, quantity=int(quantity),
                                         amount_micros=int(amount), kind=kind,
                                         reference=reference))
        return await asyncio.to_thread(self._orders, run_id, period, through, customers, usage)

    def _orders(self, run_id: str, period: str, through: int, customers: dict[UUID, Customer],
                usage: dict[tuple[UUID, str], tuple[list[UsageTotal], int]],
                ) -> list[InvoiceOrder]:
        """In a worker thread: the VAT registry check may wait on the network."""
        orders = []
        for (account_id, currency), (totals, previous_id) in sorted(usage.items()):
            customer = customers.get(account_id)
            if customer is None:
                continue
            lines = price(usage_drafts(totals, period), terms_for(customer.tax, self.registry))
            if sum(line.net_micros for line in lines) <= 0:
                continue  # nothing to bill: no invoice (the usage waits until it adds up)
            orders.append(InvoiceOrder(
                invoice_id=invoice_id_for(run_id, account_id, currency), account_id=account_id,
                currency=currency, period=period, lines=lines, billing_run_id=run_id,
                net_terms_days=customer.net_terms_days,
                billed_through=UsageWatermark(through_seq=through, through_period=period,
                                              previous_id=previous_id)))
        return orders

    # ------------------------------------------------------------------- reading

    async def view(self, run_id: str) -> BillingRunView:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT r.billing_run_id, r.period, r.status, r.started_at, r.completed_at,"
                " (SELECT count(*) FROM invoices i WHERE i.billing_run_id = r.billing_run_id)"
                " AS invoices_issued FROM billing_runs r WHERE r.billing_run_id = %s", (run_id,))
            row: dict[str, Any] | None = await cur.fetchone()
        if row is None:
            raise errors.BillingRunNotFound(f"billing run {run_id} not found")
        return BillingRunView(
            billing_run_id=row["billing_run_id"], period=row["period"], status=row["status"],
            invoices_issued=int(row["invoices_issued"]),
            started_at=row["started_at"].astimezone(UTC),
            completed_at=row["completed_at"].astimezone(UTC) if row["completed_at"] else None)

