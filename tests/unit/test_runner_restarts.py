"""The stack runner's restart policy: exponential back-off per crash, capped, reset by a
stable run, and a give-up after repeated fast crashes (which stops the stack with code 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ledger_service.databases import parse_database_map
from services.runner import (
    SERVICES,
    RestartPolicy,
    Running,
    ServiceEntry,
    Stack,
    ledger_database_map,
)
from services.settings import load_stack_settings

POLICY = RestartPolicy(delay_initial_s=1, delay_max_s=30, stable_s=60, fast_crashes_max=8)


def test_fast_crashes_double_the_delay_up_to_the_cap_then_give_up() -> None:
    delays = []
    fast = 0
    for _ in range(9):
        fast = POLICY.fast_crashes_after(fast, uptime_s=2)
        delays.append(POLICY.delay_s(fast))
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, None]


def test_a_service_that_stayed_up_starts_its_back_off_again() -> None:
    fast = 0
    for _ in range(5):
        fast = POLICY.fast_crashes_after(fast, uptime_s=1)
    assert POLICY.delay_s(fast) == 16
    fast = POLICY.fast_crashes_after(fast, uptime_s=60)
    assert (fast, POLICY.delay_s(fast)) == (1, 1)


def test_the_numbers_come_from_the_stack_settings() -> None:
    settings = load_stack_settings({"RESTART_DELAY_INITIAL_S": "0.5", "RESTART_DELAY_MAX_S": "4",
                                    "RESTART_STABLE_S": "10", "RESTART_FAST_CRASHES_MAX": "3"})
    assert RestartPolicy.of(settings) == RestartPolicy(0.5, 4, 10, 3)
    assert RestartPolicy.of(load_stack_settings({})) == POLICY


def test_a_service_that_keeps_crashing_is_restarted_then_the_stack_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_stack_settings({"RUN_DIR": str(tmp_path), "RESTART_DELAY_INITIAL_S": "0.01",
                                    "RESTART_FAST_CRASHES_MAX": "3"})
    stack = Stack(settings)
    spawned: list[subprocess.Popen[bytes]] = []

    def crashing(entry: ServiceEntry) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        spawned.append(process)
        return process

    monkeypatch.setattr(stack, "spawn", crashing)
    stack.running.append(Running(SERVICES[0], 8001, crashing(SERVICES[0])))
    assert stack.supervise() == 1
    assert len(spawned) == 4  # the first run and three restarts
    assert all(p.wait() == 3 for p in spawned)


def test_ledger_processes_start_that_many_ledgers_on_ports_ten_apart(tmp_path: Path) -> None:
    settings = load_stack_settings({"RUN_DIR": str(tmp_path), "LEDGER_PROCESSES": "3"})
    stack = Stack(settings)
    stack.env = {"LEDGER_HTTP_PORT": "9001"}
    started = [(entry.package, port) for entry, port in stack.instances()]
    assert started == [("ledger_service", 9001), ("ledger_service", 9011),
                       ("ledger_service", 9021), ("payments_service", 8002),
                       ("invoicing_service", 8003), ("sync_service", 8004)]
    stack.env = {}
    assert [p for e, p in Stack(load_stack_settings({"RUN_DIR": str(tmp_path)})).instances()
            if e.package == "ledger_service"] == [8001]


def test_a_restarted_ledger_keeps_its_own_port(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(load_stack_settings({"RUN_DIR": str(tmp_path), "LEDGER_PROCESSES": "2"}))
    stack.env = {}
    spawned: list[tuple[str, int | None]] = []

    def spawn(entry: ServiceEntry, port: int | None = None) -> subprocess.Popen[bytes]:
        spawned.append((entry.package, port))
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(stack, "spawn", spawn)
    for port in (8001, 8011):
        stack.respawn(Running(SERVICES[0], port, spawn(SERVICES[0], port)))
    # (each first spawn here is the test's own; the restart is the one after it)
    assert spawned == [("ledger_service", 8001), ("ledger_service", None),
                       ("ledger_service", 8011), ("ledger_service", 8011)]


def test_ledger_groups_start_a_ledger_per_group_with_its_database(tmp_path: Path) -> None:
    stack = Stack(load_stack_settings({"RUN_DIR": str(tmp_path), "LEDGER_GROUPS": "2"}))
    stack.env = {}
    ledgers = [port for entry, port in stack.instances() if entry.package == "ledger_service"]
    assert ledgers == [8001, 8011]
    assert [stack.ledger_group(SERVICES[0], port) for port in (None, 8001, 8011)] == [0, 0, 1]
    assert stack.ledger_group(SERVICES[1], 8002) is None
    text = ledger_database_map("postgresql://postgres@/billing?host=/tmp/pg&port=5432", 3, 16)
    databases = parse_database_map(text, 16)
    assert [g.partitions for g in databases] == [tuple(range(5)), tuple(range(5, 10)),
                                                 tuple(range(10, 16))]
    assert [g.url for g in databases] == [
        "postgresql://postgres@/billing?host=/tmp/pg&port=5432",
        "postgresql://postgres@/billing_ledger_g1?host=/tmp/pg&port=5432",
        "postgresql://postgres@/billing_ledger_g2?host=/tmp/pg&port=5432"]
