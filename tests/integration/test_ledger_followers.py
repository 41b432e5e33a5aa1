"""The ledger's follower process (event publisher, projections) lives and dies with the
service: a clean stop stops it, and a killed service does not leave it running."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import msgspec
import psutil
import pytest

from ledger_service.followers import PROCESS_NAME as FOLLOWER_PROCESS_NAME
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration


def follower_of(service: ServiceProcess) -> psutil.Process:
    assert service.process is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # multiprocessing also starts a resource tracker (and the reader its workers, once an
        # as-of read comes); the follower is the one named so
        followers = [child for child in psutil.Process(service.process.pid).children()
                     if child.name() == FOLLOWER_PROCESS_NAME]
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


async def test_the_follower_anchors_the_log_to_the_stream_and_the_file(
        infra: Infra, tmp_path: Path) -> None:
    import httpx
    import nats

    from contracts.ledger import LedgerAnchor
    from contracts.subjects import LEDGER_ANCHORS
    from ledger_service.anchors import read_anchor_file, signature_holds
    from ledger_service.settings import LedgerToolSettings
    from tests.integration.test_ledger_service import OPERATOR

    anchor_dir = tmp_path / "anchors"
    service = ServiceProcess("ledger_service", infra.service_env(
        ANCHOR_INTERVAL_S="1", ANCHOR_DIR=str(anchor_dir))).start(tmp_path)
    try:
        service.wait_ready()
        account = str(uuid.uuid4())
        async with httpx.AsyncClient(base_url=service.url, headers=OPERATOR) as http:
            opened = await http.post("/v1/accounts", json={
                "account_id": account, "type": "prepay", "currency": "GBP",
                "tax": {"country": "GB"}})
            assert opened.status_code == 201, opened.text
        path = anchor_dir / "anchors.jsonl"
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        anchors = read_anchor_file(path)
        assert anchors and anchors[-1].accounts >= 1
        assert signature_holds(anchors[-1], LedgerToolSettings().trusted_anchor_key())
        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            # The anchorer appends to the file, then publishes: the stream's last anchor may
            # still be one an earlier test's ledger published, for a moment.
            ours: set[str] = set()
            anchor = None
            while time.monotonic() < deadline:
                try:
                    published = await js.get_last_msg("ANCHORS", LEDGER_ANCHORS)
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(0.2)
                    continue
                anchor = msgspec.json.decode(published.data, type=LedgerAnchor)
                ours = {a.anchor_id for a in read_anchor_file(path)}
                if anchor.anchor_id in ours:
                    break
                await asyncio.sleep(0.2)
            assert anchor is not None, "no anchor reached the ANCHORS stream"
            assert anchor.anchor_id in ours
        finally:
            await nc.close()
    finally:
        assert service.stop() == 0
