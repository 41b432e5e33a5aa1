"""Reconciliation of a period: per account, what the invoices bill for the period against
the usage debits the ledger published for it (ledger.v1.events.entry_posted).

Each invoice line's net is the exact sum of the debits it bills rounded half-up to minor
units, so per account:

    invoiced net == billed debits  within  half a minor unit (5,000 micros) per line

where billed debits are the period's debits on issued, not voided, invoices (the invoice
that billed a line is the first billing-run watermark covering it, `usage_lines_billing`). Debits on
voided invoices and debits not billed yet (usage that arrived late; it goes on the next
invoice as a correction line) are reported beside, not counted as a mismatch, unless the
period's run completed after they arrived: then the run skipped them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import msgspec
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from contracts.http.invoicing import InvoiceView
from contracts.money import to_micros
from invoicing_service.app.billing import run_id_of
from invoicing_service.domain.rounding import round_to_minor

HALF_MINOR_UNIT_MICROS: Final = 5_000
_view_decoder = msgspec.json.Decoder(InvoiceView)


@dataclass(frozen=True, slots=True)
class AccountReconciliation:
    account_id: str
    currency: str
    debits_micros: int  # every usage debit of the period received
    billed_debits_micros: int  # those on issued, not voided, invoices
    voided_debits_micros: int
    unbilled_debits_micros: int
    missed_debits_micros: int  # unbilled although they arrived before the run completed
    invoiced_net_micros: int  # invoice lines for the period, after rounding
    lines: int

    @property
    def tolerance_micros(self) -> int:
        return HALF_MINOR_UNIT_MICROS * self.lines

    @property
    def matches(self) -> bool:
        # Dust (usage worth less than half a minor unit) is not invoiced until it adds up.
        return abs(self.invoiced_net_micros - self.billed_debits_micros) <= self.tolerance_micros \
            and round_to_minor(self.missed_debits_micros) == 0


async def reconcile(pool: AsyncConnectionPool, period: str) -> AsyncIterator[AccountReconciliation]:
    """One result per (account, currency) with usage or invoice lines in the period."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT completed_at FROM billing_runs WHERE billing_run_id = %s",
                          (run_id_of(period),))
        run = await cur.fetchone()
        completed_at = run["completed_at"] if run else None
        await cur.execute(
            "SELECT u.account_id::text AS account_id, u.currency,"
            " sum(u.amount_micros) AS debits,"
            " coalesce(sum(u.amount_micros) FILTER (WHERE i.status <> 'void'), 0) AS billed,"
            " coalesce(sum(u.amount_micros) FILTER (WHERE i.status = 'void'), 0) AS voided,"
            " coalesce(sum(u.amount_micros) FILTER (WHERE u.billed_by IS NULL), 0) AS unbilled,"
            " coalesce(sum(u.amount_micros) FILTER (WHERE u.billed_by IS NULL"
            "   AND %s::timestamptz IS NOT NULL AND u.received_at < %s::timestamptz"
            "   AND a.account_type = 'postpay'), 0) AS missed"
            " FROM usage_lines_billing u LEFT JOIN invoices i ON i.invoice_id = u.billed_by"
            " LEFT JOIN accounts a ON a.account_id = u.account_id"
            " WHERE u.period = %s GROUP BY u.account_id, u.currency",
            (completed_at, completed_at, period))
        debits = {(row["account_id"], row["currency"]): row for row in await cur.fetchall()}
        invoiced: dict[tuple[str, str], tuple[int, int]] = {}
        key: tuple[str, str]
        await cur.execute(
            "SELECT view FROM invoices WHERE kind = 'usage' AND status NOT IN ('void', 'draft')"
            " AND period >= %s", (period,))
        async for row in cur:
            view = _view_decoder.decode(row["view"])
            key = (str(view.account_id), view.currency)
            for line in view.lines:
                if line.period == period:
                    net, count = invoiced.get(key, (0, 0))
                    invoiced[key] = (net + to_micros(line.net_amount), count + 1)
    for key in sorted(set(debits) | set(invoiced)):
        found = debits.get(key)
        net, count = invoiced.get(key, (0, 0))
        yield AccountReconciliation(
            account_id=key[0], currency=key[1],
            debits_micros=int(found["debits"]) if found else 0,
            billed_debits_micros=int(found["billed"]) if found else 0,
            voided_debits_micros=int(found["voided"]) if found else 0,
            unbilled_debits_micros=int(found["unbilled"]) if found else 0,
            missed_debits_micros=int(found["missed"]) if found else 0,
            invoiced_net_micros=net, lines=count)
