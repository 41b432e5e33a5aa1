"""The pool checks a connection before handing it out only when it has sat idle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from services.database import POOL_CHECK_IDLE_S, _IdleCheck


class FakeConnection:
    pass


def test_a_connection_is_checked_when_new_or_idle_and_not_when_just_returned(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[Any] = []

    async def check_connection(conn: Any) -> None:
        checked.append(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(check_connection))
    now = [100.0]
    idle_check = _IdleCheck(clock=lambda: now[0])
    conn = FakeConnection()

    async def scenario() -> None:
        await idle_check.check(conn)  # never returned yet: checked
        await idle_check.reset(conn)
        now[0] += POOL_CHECK_IDLE_S / 2
        await idle_check.check(conn)  # busy pool: not checked
        await idle_check.reset(conn)
        now[0] += POOL_CHECK_IDLE_S * 2
        await idle_check.check(conn)  # idle: checked

    asyncio.run(scenario())
    assert checked == [conn, conn]
