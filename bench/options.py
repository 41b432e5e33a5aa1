"""What ``python -m bench`` was asked for, handed to every benchmark."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from bench.infra import Profiler


@dataclass(frozen=True, slots=True)
class RunOptions:
    quick: bool = False  # smaller numbers: a smoke run of about a minute
    profile: bool = False  # py-spy the service while it is measured
    processes: int | None = None  # service processes, where a benchmark can run several


@contextlib.contextmanager
def profiled(options: RunOptions, pid: int, name: str) -> Iterator[None]:
    """Sample ``pid`` with py-spy for the duration of the block when asked to."""
    if not options.profile:
        yield
        return
    profiler = Profiler(pid, name)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
