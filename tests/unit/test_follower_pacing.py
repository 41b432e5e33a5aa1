"""How the followers pace themselves: after a short batch or round (the head is near) they
linger, so a batch gathers milliseconds of events instead of one commit's worth; a full one
is followed at once (a backlog is worked off without pauses); an empty one waits longer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from ledger_service.projections.runner import BatchResult, ProjectionRunner
from ledger_service.publisher import NOTIFICATIONS_PER_ROUND_MAX, EventPublisher


class ScriptedWaits:
    """Stands in for the stopping event: records each wait, and is set once the script ends."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.done = False

    def is_set(self) -> bool:
        return self.done

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.done

    def set(self) -> None:
        self.done = True


def test_the_runner_lingers_after_a_short_batch_and_not_after_a_full_one() -> None:
    runner = ProjectionRunner(lambda: None, None, lambda *_: None, names=(),  # type: ignore[arg-type]
                              batch_size=500, batch_size_max=500, idle_wait_s=0.05,
                              linger_s=0.02)
    waits = ScriptedWaits()
    script = [500, 500, 3, 0, 499]

    def step() -> BatchResult:
        notifications = script.pop(0)
        if not script:
            waits.set()
        return BatchResult(notifications, notifications, 0)

    runner._stopping = waits  # type: ignore[assignment]
    runner.step = step  # type: ignore[method-assign]
    runner._run()
    assert waits.waits == [0.02, 0.05, 0.02]  # none after the two full batches


async def test_the_publisher_lingers_after_a_short_round_and_not_after_a_full_one() -> None:
    mapper = SimpleNamespace(transcoder=None, cipher=None, compressor=None)
    ledger = SimpleNamespace(app=SimpleNamespace(mapper=mapper))
    publisher = EventPublisher(ledger, None, linger_s=0.01)  # type: ignore[arg-type]
    script: list[tuple[int, int] | None] = [
        (10, NOTIFICATIONS_PER_ROUND_MAX), (20, 5), None, (30, 1)]
    idles: list[float] = []

    async def publish_round(position: int) -> tuple[int, int] | None:
        answer = script.pop(0)
        if not script:
            publisher._stopping.set()
        return answer

    async def idle(seconds: float) -> None:
        idles.append(seconds)

    async def nothing(*_: Any) -> None:
        return None

    publisher._publish_round = publish_round  # type: ignore[method-assign]
    publisher._idle = idle  # type: ignore[method-assign]
    publisher._position = lambda: 0  # type: ignore[method-assign]
    publisher._acks.close = nothing  # type: ignore[method-assign]
    await asyncio.wait_for(publisher._run(), 5)
    assert idles == [0.01, 0.2, 0.01]  # none after the full round; idle after the empty one
