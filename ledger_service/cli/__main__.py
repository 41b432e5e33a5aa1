"""`python -m ledger_service.cli`: ledgerctl without the console script."""

from ledger_service.cli import app

app()
