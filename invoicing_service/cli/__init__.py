"""invoicingctl: operator tools of the invoicing service, one module per command group.

    invoicingctl billing-run 2026-10      run (or finish) a month's billing, with progress
    invoicingctl reconcile 2026-10        invoices against the ledger's usage debits
    invoicingctl export 2026-10 > x.csv   the month's invoices and credit notes as CSV
"""

from __future__ import annotations

from invoicing_service.cli import billing, documents, reconcile  # noqa: F401 - registers commands
from invoicing_service.cli.app import app

__all__ = ["app"]
