"""renewals: a month's renewals on the 1st (issue 13): N items across M accounts, each owing
one monthly charge, planned and charged by invoicing's Renewals through the ledger.

    python -m bench.renewals                       # 100,000 items, 20,000 accounts
    python -m bench.renewals --items 5000 --accounts 1000

Two runs over the same seeded items:
- baseline: Renewals against an in-process ledger that answers at once (no HTTP, no event
  store): the invoicing side alone (plan, claim with SKIP LOCKED, record, outbox);
- ledger: Renewals against `python -m ledger_service serve` over HTTP, as production runs it
  (each charge one POST /v1/accounts/{id}/charges: load, price, save an event).

Reports renewals/s of each, and the peak memory (max RSS) of this process and of the ledger.
Prepay accounts with ample credit; each item's previous months are taken as charged (items
start on the 1st of last month, planned through it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import infra
from bench.accounts import open_prepay_accounts
from bench.cpu import CpuMeter
from contracts.http.ledger import FeeView
from invoicing_service.recurring.app.ledger import (
    Charged,
    ChargeOutcome,
    CreditOutcome,
    FeeRequest,
    LedgerCharges,
)
from invoicing_service.recurring.app.renewals import Renewals
from invoicing_service.recurring.domain import month_start, next_period, period_of
from services.database import apply_migrations, conninfo, create_pool
from services.http import DEVELOPMENT_JWT_SECRET

NAME = "renewals"
DATABASE = "billing_bench_renewals"
MIGRATIONS = Path(__file__).resolve().parents[1] / "invoicing_service" / "migrations"
CREDIT_MICROS = 10**12
TARGET_PER_S = 5_000


class InstantLedger:
    """The baseline: every charge accepted at once, nothing stored."""

    async def charge_many(self, fees: Sequence[FeeRequest]) -> list[ChargeOutcome]:
        return [self.charge(fee) for fee in fees]

    async def credit(self, account_id: uuid.UUID, key: str, amount: str, memo: str
                     ) -> CreditOutcome:
        raise NotImplementedError("renewals never credit")

    def charge(self, fee: FeeRequest) -> ChargeOutcome:
        return Charged(FeeView(
            entry_id=str(uuid.uuid5(fee.account_id, fee.charge_key)), account_id=fee.account_id,
            charge_key=fee.charge_key, kind="fee", product=fee.product, quantity=fee.quantity,
            unit_price="2.00", amount="2.00", currency="GBP", reference=fee.reference,
            period=fee.period, balance_after="0", occurred_at=datetime.now(UTC)))


def seed_items(url: str, accounts: list[uuid.UUID], items: int, previous: str) -> None:
    with psycopg.connect(conninfo(url, options="-c search_path=invoicing,public")) as conn:
        with conn.cursor() as cur, cur.copy(
                "COPY recurring_items (item_id, account_id, product, quantity, reference,"
                " starts_on, planned_through) FROM STDIN") as copy:
            starts_on = month_start(previous)
            item_ids = [uuid.uuid4() for _ in range(items)]
            for n, item_id in enumerate(item_ids):
                copy.write_row((item_id, accounts[n % len(accounts)], "vmn", 1,
                                f"+44{n:010d}", starts_on, previous))
        # last month's charges (setup, the month) as the earlier runs left them
        with conn.cursor() as cur, cur.copy(
                "COPY recurring_charges (item_id, period, account_id, product, quantity,"
                " due_on, status, entry_id, amount, currency, charged_at) FROM STDIN") as copy:
            for n, item_id in enumerate(item_ids):
                for period, product in (("setup", "vmn_setup"), (previous, "vmn")):
                    copy.write_row((item_id, period, accounts[n % len(accounts)], product, 1,
                                    starts_on, "charged", f"seed-{n}-{period}", "2.00", "GBP",
                                    datetime.now(UTC)))
        conn.execute("ANALYZE recurring_items")
        conn.execute("ANALYZE recurring_charges")


def reset(url: str, previous: str) -> None:
    with psycopg.connect(conninfo(url, options="-c search_path=invoicing,public")) as conn:
        conn.execute("DELETE FROM recurring_charges WHERE status <> 'charged'"
                     " OR entry_id NOT LIKE 'seed-%%'")
        conn.execute("TRUNCATE recurring_item_events, outbox")
        conn.execute("UPDATE recurring_items SET planned_through = %s", (previous,))
        conn.execute("ANALYZE recurring_items")
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def children_of(pid: int) -> list[int]:
    """The ledger's own child processes (its followers: publisher and projections)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def meter(url: str, ledger_pid: int | None) -> CpuMeter:
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    """CPU seconds of the invoicing side (this process: Renewals), its PostgreSQL backends,
    and the ledger's process and followers when it runs."""
    groups: dict[str, Any] = {
        "invoicing (bench process)": lambda: [os.getpid()],
        "postgres backends": lambda: infra.backend_pids(url, str(database)),
    }
    if ledger_pid is not None:
        groups["ledger (HTTP + writer)"] = lambda: [ledger_pid]
        groups["ledger followers"] = lambda: children_of(ledger_pid)
    return CpuMeter(groups)


async def renew(url: str, ledger: Any, today: date, *, concurrency: int,
                batch_size_max: int, ledger_pid: int | None = None) -> dict[str, Any]:
    pool = create_pool(url, "invoicing", max_size=4, name="bench-renewals")
    await pool.open(wait=True)
    try:
        renewals = Renewals(pool, ledger, grace=timedelta(days=7),
                            retry_interval=timedelta(days=1), batch_size_max=batch_size_max,
                            concurrency=concurrency,
                            clock=lambda: datetime.combine(today, datetime.min.time(), UTC)
                            + timedelta(hours=1))
        cpu = meter(url, ledger_pid)
        cpu.start()
        started = time.perf_counter()
        planned = await renewals.plan(today)
        planned_s = time.perf_counter() - started
        plan_report = cpu.stop()  # the planning alone: the meter keeps counting from start
        counts = await renewals.charge_due(today, renewals.clock())
        elapsed_s = time.perf_counter() - started
        report = cpu.stop()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM recurring_charges WHERE status = 'charged'"
                " AND period = %s", (period_of(today),))
            row = await cursor.fetchone()
    finally:
        await pool.close()
    charged = int(row[0]) if row else 0
    return {"planned": planned, "charged": counts.charged, "charged_rows": charged,
            "refused": counts.refused, "failed": counts.failed,
            "plan_s": round(planned_s, 2), "elapsed_s": round(elapsed_s, 2),
            "renewals_per_s": round(counts.charged / elapsed_s, 1) if elapsed_s else None,
            "plan_cpu_ms_per_item": {name: round(1000 * cpu_s / max(planned, 1), 3)
                                     for name, cpu_s in plan_report.cpu_s_by_group.items()},
            "cpu_ms_per_renewal": {name: round(1000 * cpu_s / max(counts.charged, 1), 3)
                                   for name, cpu_s in report.cpu_s_by_group.items()},
            "cpu": report.as_dict()}


def ledger_peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.renewals")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--baseline-only", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the ledger process during the run through it")
    parser.add_argument("--database", default=DATABASE,
                        help="a database of its own (dropped and created)")
    parser.add_argument("--out", default=NAME, help="results file name (bench/results/)")
    args = parser.parse_args(argv)

    this_period = period_of(date.today())
    today = month_start(next_period(this_period))  # the 1st of next month
    url = infra.recreate_database(args.database)
    ledger = infra.open_ledger(url)
    try:
        accounts = open_prepay_accounts(ledger, args.accounts, CREDIT_MICROS)
    finally:
        ledger.app.close()
    apply_migrations(url, "invoicing", MIGRATIONS)
    seed_items(url, accounts, args.items, this_period)
    reset(url, this_period)
    print(f"renewals: {args.items} items across {args.accounts} accounts, renewing"
          f" {period_of(today)}", flush=True)

    result: dict[str, Any] = {"items": args.items, "accounts": args.accounts,
                              "concurrency": args.concurrency, "batch": args.batch,
                              "target_per_s": TARGET_PER_S}
    result["baseline"] = asyncio.run(renew(url, InstantLedger(), today,
                                           concurrency=args.concurrency,
                                           batch_size_max=args.batch))
    print(f"renewals: baseline (no ledger) {result['baseline']}", flush=True)
    if not args.baseline_only:
        reset(url, this_period)
        with infra.own_nats() as nats, infra.LedgerProcess(url, nats.url) as service:
            charges = LedgerCharges(service.url, DEVELOPMENT_JWT_SECRET, timeout_s=30,
                                    attempts_max=4, retry_initial_s=0.2, retry_max_s=5)

            async def through_ledger() -> dict[str, Any]:
                try:
                    return await renew(url, charges, today, concurrency=args.concurrency,
                                       batch_size_max=args.batch, ledger_pid=service.pid)
                finally:
                    await charges.aclose()

            profilers = [infra.Profiler(service.pid, f"{args.out}-ledger"),
                         infra.Profiler(os.getpid(), f"{args.out}-invoicing")] \
                if args.profile else []
            for profiler in profilers:
                profiler.start()
            try:
                result["ledger"] = asyncio.run(through_ledger())
            finally:
                for profiler in profilers:
                    profiler.stop()
            result["ledger"]["ledger_peak_rss_mib"] = ledger_peak_rss_mib(service.pid)
        print(f"renewals: through the ledger {result['ledger']}", flush=True)
    result["bench_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    ok = all(run["charged_rows"] == args.items for key, run in result.items()
             if key in ("baseline", "ledger"))
    infra.save_json(infra.RESULTS_DIR / f"{args.out}.json", result)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
