"""The embedded 3-node JetStream cluster (make run CLUSTER=3): streams replicated three ways
keep every acknowledged publish when a node is SIGKILLed mid-load and when it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from services.broker import nats_servers
from services.embedded import NatsCluster, start_nats_cluster

# A fault test: `make faults` runs it (docs/faults.md). Its intermittent failures in loaded
# runs had two causes, neither in the services: nats-py does not retry a JetStream publish
# answered "no responders" while the stream elects a leader (nats.go does, ADR-22), so this
# client must; and a port found free was sometimes bound by another process before a node
# started, leaving a "cluster" of two that refused 3-replica streams (fixed in
# services/embedded.py, tests/integration/test_embedded_nats.py).
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    os.environ.get("FAULTS") != "1", reason="fault test: run with `make faults` (FAULTS=1)")]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    started = start_nats_cluster(tmp_path / "cluster")
    try:
        yield started
    finally:
        started.stop()


async def _publish(js: object, subject: str, key: str, deadline_s: float = 30) -> bool:
    """Publish until acknowledged (a leader election makes a few attempts time out)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        # While the stream elects a new leader, a publish times out or is answered "no
        # response from stream": not acknowledged, so published again (as a producer would).
        with contextlib.suppress(nats.errors.TimeoutError, nats.js.errors.APIError,
                                 nats.errors.NoRespondersError,
                                 nats.js.errors.NoStreamResponseError):
            await js.publish(subject, key.encode(), timeout=2,  # type: ignore[attr-defined]
                             headers={"Nats-Msg-Id": key})
            return True
        await asyncio.sleep(0.2)
    return False


async def _retrying(call: Any, deadline_s: float = 60) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except (nats.errors.TimeoutError, nats.js.errors.APIError,
                nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _add_stream(js: object) -> None:
    deadline = time.monotonic() + 30
    while True:  # the cluster elects its meta leader a moment after the nodes start
        try:
            await js.add_stream(StreamConfig(  # type: ignore[attr-defined]
                name="FAULTS", subjects=["faults.>"], num_replicas=3, duplicate_window=600))
            return
        except (nats.js.errors.APIError, nats.errors.TimeoutError,
                nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_acknowledged_publishes_survive_a_node_killed_and_restarted(
        cluster: NatsCluster) -> None:
    assert len(nats_servers(cluster.url)) == 3
    nc = await nats.connect(nats_servers(cluster.url), max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await _add_stream(js)
        acknowledged: list[str] = []
        for n in range(100):
            assert await _publish(js, "faults.a", f"m-{n}")
            acknowledged.append(f"m-{n}")
        # Kill the node this client is connected to: it must fail over, and the stream's
        # RAFT group (three replicas) keeps every acknowledged message.
        victim = next(i for i, port in enumerate(cluster.client_ports)
                      if nc.connected_url is not None and nc.connected_url.port == port)
        cluster.kill(victim)
        for n in range(100, 200):
            assert await _publish(js, "faults.a", f"m-{n}"), f"m-{n} never acknowledged"
            acknowledged.append(f"m-{n}")
        cluster.restart(victim)
        for n in range(200, 250):
            assert await _publish(js, "faults.a", f"m-{n}")
            acknowledged.append(f"m-{n}")
        # A duplicate from a producer retrying after a lost acknowledgement is dropped.
        assert await _publish(js, "faults.a", "m-5")
        info = await _retrying(lambda: js.stream_info("FAULTS"))
        assert info.state.messages == len(acknowledged)
        # A JetStream API request may time out while the restarted node catches up and the
        # cluster settles its leaders: retried, as a service's consumer set-up is.
        sub = await _retrying(lambda: js.pull_subscribe("faults.>", durable="check",
                                                        stream="FAULTS"))
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < len(acknowledged) and time.monotonic() < deadline:
            try:
                for msg in await sub.fetch(100, timeout=5):
                    seen.append(msg.data.decode())
                    await msg.ack()
            except nats.errors.TimeoutError:
                continue
            except nats.js.errors.ServiceUnavailableError:
                # The new consumer's own RAFT group (3 replicas) is electing its leader: a
                # pull request meets no responder and is answered 503. Pull again, as the
                # services' DurableConsumer does.
                await asyncio.sleep(0.5)
        assert sorted(seen) == sorted(acknowledged)
    finally:
        await nc.close()
