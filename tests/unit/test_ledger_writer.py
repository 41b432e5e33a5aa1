"""The ledger's writer thread: one job at a time, most urgent first, errors to the caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ledger_service.messaging import Priority, Writer


async def test_queued_authorizations_run_before_queued_intake() -> None:
    writer = Writer()
    gate = threading.Event()
    order: list[str] = []
    try:
        busy = asyncio.create_task(writer.call(gate.wait, priority=Priority.INTAKE))
        await asyncio.sleep(0.05)  # the writer is now inside the first job
        intake = asyncio.create_task(writer.call(order.append, "intake", priority=Priority.INTAKE))
        await asyncio.sleep(0.01)
        authorize = asyncio.create_task(
            writer.call(order.append, "authorize", priority=Priority.AUTHORIZE))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(busy, intake, authorize)
        assert order == ["authorize", "intake"]
    finally:
        writer.close()


async def test_an_exception_reaches_the_caller_and_the_writer_goes_on() -> None:
    writer = Writer()
    try:
        with pytest.raises(ZeroDivisionError):
            await writer.call(lambda: 1 / 0)
        assert await writer.call(lambda: threading.current_thread().name) == "ledger-writer"
    finally:
        writer.close()
