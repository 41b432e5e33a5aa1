"""`make faults`: the fault table, printed after the run (tests/faults/harness.py)."""

from __future__ import annotations

from typing import Any

from tests.faults.harness import Outcome, table

OUTCOMES: list[Outcome] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES:
        return
    terminalreporter.section("fault table")
    terminalreporter.write_line(table(OUTCOMES))
