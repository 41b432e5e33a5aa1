"""IntakeBatcher: the batches of several consumers that arrive together share one writer
call, and each consumer gets exactly its own verdicts back (or the call's error)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger_service.app.intake import UsageVerdict
from ledger_service.messaging import IntakeBatcher


class SlowWriter:
    """Stands in for the writer thread: records each call's messages, answers later."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.fail = fail

    async def call(self, fn: Any, ledger: Any, messages: list[Any], **_: Any) -> Any:
        self.calls.append(list(messages))
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("database away")
        return [UsageVerdict("applied", detail=str(m)) for m in messages]


async def test_batches_waiting_together_share_one_call_and_get_their_own_verdicts() -> None:
    writer = SlowWriter()
    batcher = IntakeBatcher(ledger=None, writer=writer, messages_max=5)  # type: ignore[arg-type]
    first = asyncio.create_task(batcher.apply(["a1", "a2"]))  # type: ignore[list-item]
    await asyncio.sleep(0)  # the first call is under way
    rest = [asyncio.create_task(batcher.apply(batch))  # type: ignore[arg-type]
            for batch in (["b1"], ["c1", "c2", "c3"], ["d1", "d2"])]
    results = await asyncio.gather(first, *rest)
    assert [[v.detail for v in verdicts] for verdicts in results] == [
        ["a1", "a2"], ["b1"], ["c1", "c2", "c3"], ["d1", "d2"]]
    # a alone (it started the drain), then b and c together (4 <= 5), then d (6 > 5)
    assert writer.calls == [["a1", "a2"], ["b1", "c1", "c2", "c3"], ["d1", "d2"]]


async def test_a_failed_call_fails_every_batch_in_it_and_the_next_ones_still_run() -> None:
    writer = SlowWriter(fail=True)
    batcher = IntakeBatcher(ledger=None, writer=writer)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(batcher.apply([name])) for name in ("x", "y")]  # type: ignore[list-item]
    for task in tasks:
        with pytest.raises(ConnectionError):
            await task
    writer.fail = False
    assert [v.detail for v in await batcher.apply(["z"])] == ["z"]  # type: ignore[list-item]
