"""The ledger's follower process (event publisher, projections) lives and dies with the
service: a clean stop stops it, and a killed service does not leave it running."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration


def follower_of(service: ServiceProcess) -> psutil.Process:
    assert service.process is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # multiprocessing also starts a resource tracker; the follower is the spawned one
        followers = [child for child in psutil.Process(service.process.pid).children()
                     if "spawn_main" in " ".join(child.cmdline())]
        if followers:
            return followers[0]
        time.sleep(0.1)
    raise AssertionError("the ledger service started no follower process")


def gone(process: psutil.Process, timeout_s: float = 20) -> bool:
    try:
        process.wait(timeout_s)
    except psutil.TimeoutExpired:
        return False
    return True


def test_a_clean_stop_stops_the_follower(infra: Infra, tmp_path: Path) -> None:
    service = ServiceProcess("ledger_service", infra.service_env()).start(tmp_path)
    service.wait_ready()
    follower = follower_of(service)
    # A stop that arrives while the follower is still importing ends it before it logs; the
    # behaviour pinned here is the drain of a running follower.
    deadline = time.monotonic() + 30
    while "followers started" not in service.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.stop() == 0
    assert gone(follower)
    assert "followers stopped" in service.logs()


def test_a_killed_service_does_not_leave_its_follower_running(infra: Infra, tmp_path: Path) -> None:
    service = ServiceProcess("ledger_service", infra.service_env()).start(tmp_path)
    service.wait_ready()
    follower = follower_of(service)
    assert service.process is not None
    service.process.send_signal(signal.SIGKILL)
    service.process.wait()
    assert gone(follower), "the follower outlived its service"
