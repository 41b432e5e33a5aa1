"""CPU time of the processes in a benchmark, from /proc (Linux), and of the whole machine.

Two cores are shared by the load generator, the service, nats-server and PostgreSQL, and by
anyone else running tests on the machine: each result says who used them, so a figure can be
read as "the service was CPU-bound" or "the machine was busy with something else".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(p) for p in parts]
    idle = ticks[3] + ticks[4]  # idle + iowait
    busy = sum(ticks[:8]) - idle  # guest time is already inside user
    return busy / CLOCK_TICKS_PER_S


def machine_steal_s() -> float:
    """CPU seconds since boot that the hypervisor gave to other machines while this one had
    work ready (steal): on a shared host, the time a benchmark waited for reasons not its own.
    It is inside machine_busy_s."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[8]) / CLOCK_TICKS_PER_S


PidSource = Callable[[], list[int]]


@dataclass
class CpuMeter:
    """CPU seconds per named group of processes between start() and stop().

    A group is a function giving its pids now (PostgreSQL backends come and go); a pid seen
    only at the end counts from zero.
    """

    groups: Mapping[str, PidSource]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine_start_s: float = 0.0
    _wall_start_s: float = 0.0

    def start(self) -> None:
        self._start = {name: {pid: process_cpu_s(pid) for pid in pids()}
                       for name, pids in self.groups.items()}
        self._machine_start_s = machine_busy_s()
        self._wall_start_s = time.monotonic()

    def stop(self) -> CpuReport:
        wall_s = time.monotonic() - self._wall_start_s
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self._start.get(name, {})
            used[name] = sum(max(0.0, process_cpu_s(pid) - before.get(pid, 0.0))
                             for pid in set(pids()) | set(before))
        return CpuReport(wall_s, used, machine_busy_s() - self._machine_start_s)


@dataclass(frozen=True, slots=True)
class CpuReport:
    wall_s: float
    cpu_s_by_group: dict[str, float]
    machine_busy_s: float

    def cores(self, cpu_s: float) -> float:
        return cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        ours = sum(self.cpu_s_by_group.values())
        return {
            "wall_s": round(self.wall_s, 3),
            "cores_by_group": {k: round(self.cores(v), 2) for k, v in self.cpu_s_by_group.items()},
            "cores_machine_busy": round(self.cores(self.machine_busy_s), 2),
            # PostgreSQL's own background processes (WAL writer, checkpointer) and anybody
            # else on the machine.
            "cores_other": round(self.cores(max(0.0, self.machine_busy_s - ours)), 2),
            "cores_available": CORES,
        }

    def line(self) -> str:
        data = self.as_dict()
        groups = ", ".join(f"{k} {v:.2f}" for k, v in data["cores_by_group"].items())  # type: ignore[attr-defined]
        return (f"CPU cores used: {groups}, other {data['cores_other']:.2f};"
                f" machine busy {data['cores_machine_busy']:.2f} of {CORES}")
