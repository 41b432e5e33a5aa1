"""``python -m bench [--quick] [--only NAME ...] [--profile]``: run the ledger's benchmarks.

Targets are measured, never asserted: the exit status is 1 only when a benchmark broke or its
work was wrong (balances, idempotency keys, dead letters), so ``--quick`` can serve as a CI
smoke test.

Each benchmark owns its servers for the run (a fresh ``billing_bench`` database on the
machine's PostgreSQL, its own nats-server) and writes its figures, with the machine they were
measured on, to bench/results/<name>.json. docs/benchmarks.md explains every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    account_load,
    asof_reads,
    authorize,
    billing_run,
    infra,
    intake_e2e,
    nats_replicas,
    projections,
    sync_xero,
)
from bench.cpu import machine_busy_s
from bench.options import RunOptions
from services.embedded import nats_server_binary

QUIET_SAMPLE_S = 2.0
QUIET_CORES_MAX = 0.3  # other people's tests share these 2 cores; say when they are busy
Benchmark = Callable[[RunOptions], dict[str, Any]]
BENCHMARKS: dict[str, Benchmark] = {
    intake_e2e.NAME: intake_e2e.run,
    authorize.NAME: authorize.run,
    account_load.NAME: account_load.run,
    asof_reads.NAME: asof_reads.run,
    projections.NAME: projections.run,
    sync_xero.NAME: sync_xero.run,
    billing_run.NAME: billing_run.run,
    nats_replicas.NAME: nats_replicas.run,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = RunOptions(quick=args.quick, profile=args.profile, processes=args.processes)
    machine = describe_machine()
    print(f"bench: {'quick' if options.quick else 'full'} run on {machine['cpu_model']}"
          f" x{machine['nproc']}, {machine['postgresql']}, nats-server {machine['nats_server']}",
          flush=True)
    if machine["cores_busy_before_start"] > QUIET_CORES_MAX:
        print(f"bench: WARNING the machine was already using {machine['cores_busy_before_start']}"
              " cores before we started: the figures will be lower than on a quiet machine",
              flush=True)
    started_s = time.perf_counter()
    failures = []
    for name in args.only or list(BENCHMARKS):
        print(f"bench: {name} ...", flush=True)
        benchmark_started_s = time.perf_counter()
        try:
            result = BENCHMARKS[name](options)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"bench: {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            failures.append(name)
            continue
        result["duration_s"] = round(time.perf_counter() - benchmark_started_s, 1)
        result["machine"] = machine
        result["mode"] = "quick" if options.quick else "full"
        path = write_result(name, result, options)
        print(f"bench: {name} done in {result['duration_s']} s, target met: "
              f"{result.get('target_met')}; {path.relative_to(infra.ROOT)}", flush=True)
        if not result.get("verification", {"ok": True})["ok"]:
            # A figure of wrong work is no figure: this, not a missed target, fails the run.
            print(f"bench: {name} FAILED verification: {result['verification']}", flush=True)
            failures.append(name)
    print(f"bench: all done in {time.perf_counter() - started_s:.0f} s", flush=True)
    return 1 if failures else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smaller numbers: a smoke run of about a minute")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the service while it is measured (bench/results/*.svg, *.gil.txt)")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="sync_xero: sync service processes sharing the organisations"
                        f" (default {sync_xero.PROCESSES_DEFAULT})")
    return parser.parse_args(argv)


def write_result(name: str, result: dict[str, Any], options: RunOptions) -> Path:
    # A profiled run is slower (py-spy samples the service): never over a clean figure.
    suffix = ("-quick" if options.quick else "") + ("-profiled" if options.profile else "")
    return infra.save_json(infra.RESULTS_DIR / f"{name}{suffix}.json", result)


def describe_machine() -> dict[str, Any]:
    busy_start_s = machine_busy_s()
    time.sleep(QUIET_SAMPLE_S)
    return {
        "cores_busy_before_start": round((machine_busy_s() - busy_start_s) / QUIET_SAMPLE_S, 2),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        **infra.server_versions(infra.BASE_DATABASE_URL),
        "nats_server": _command_output([nats_server_binary(), "--version"]),
        "git_commit": _command_output(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_command_output(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=infra.ROOT).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
