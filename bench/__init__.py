"""Benchmarks of the ledger (``python -m bench``); figures and method in docs/benchmarks.md."""
