"""Faults injected into a running stack under load (tests/faults/harness.py says what each
checks): `make faults` runs them (FAULTS=1) and prints their table; the default suite skips
them, since each restarts servers and together they take minutes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.faults.conftest import OUTCOMES
from tests.faults.harness import FAULTS, Fault, Outcome, run_fault
from tests.faults.stack import ROOT, Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    os.environ.get("FAULTS") != "1", reason="fault test: run with `make faults` (FAULTS=1)")]
RUN_DIR = ROOT / ".run" / "faults"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(RUN_DIR / "one-ledger") as started:
        yield started


def outcome_asserted(outcome: Outcome) -> None:
    OUTCOMES.append(outcome)
    assert outcome.lost == 0, outcome
    assert outcome.doubled == 0, outcome
    assert outcome.balances_wrong == 0, outcome
    assert outcome.holds_missing == 0, outcome
    assert outcome.verify_ok, outcome.verify_detail
    assert outcome.dead_letters_found == outcome.dead_letters_expected, outcome
    assert outcome.dead_letters_unexpected == 0, outcome


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.ledger_processes == 1],
                         ids=lambda f: f.key)
async def test_nothing_is_lost_or_doubled_when(fault: Fault, stack: Stack) -> None:
    outcome_asserted(await run_fault(stack, fault))


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.ledger_processes > 1],
                         ids=lambda f: f.key)
async def test_nothing_is_lost_or_doubled_with_partitions_when(fault: Fault) -> None:
    reason = fault.unsupported()
    if reason is not None:
        OUTCOMES.append(Outcome(fault.title, skipped=reason))
        pytest.skip(reason)
    with running_stack(RUN_DIR / "partitions", ledger_processes=fault.ledger_processes) as stack:
        outcome_asserted(await run_fault(stack, fault))
