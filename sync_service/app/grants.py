"""Xero grants (token sets), encrypted at rest, refreshed one at a time.

An access token is refreshed `margin` before it expires, and at once when Xero answers 401.
The refresh happens under a row lock on the grant (``SELECT ... FOR UPDATE``), so among
several processes one refreshes and the others, once the lock is theirs, find the new token
and use it; inside a process an asyncio lock per grant keeps waiting callers off the pool.
The rotated refresh token is written in the transaction that holds the lock, and committed
before anyone uses the new access token: a crash after Xero rotated but before the commit
leaves the previous refresh token, which Xero honours for 30 minutes. `invalid_grant` marks
the grant and its connections broken; their changes stay queued until an operator reconnects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from services.logging import register_secret
from sync_service.app.credentials import KeyRing
from sync_service.app.xero_api import TokenSet, XeroClient
from sync_service.domain.errors import GrantBroken

log = structlog.get_logger(__name__)

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class AccessToken:
    grant_id: str
    value: str
    expires_at: datetime


def _context(grant_id: str, column: str) -> str:
    return f"xero_grants:{grant_id}:{column}"


class Grants:
    def __init__(self, pool: AsyncConnectionPool, keys: KeyRing, xero: XeroClient, *,
                 refresh_margin_s: float) -> None:
        self._pool = pool
        self._keys = keys
        self._xero = xero
        self._margin = timedelta(seconds=refresh_margin_s)
        self._cache: dict[str, AccessToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def store(self, conn: Conn, grant_id: str, operator: str, tokens: TokenSet) -> None:
        """A new grant, in the caller's transaction."""
        key_id, access = self._keys.encrypt(tokens.access_token, _context(grant_id, "access"))
        _, refresh = self._keys.encrypt(tokens.refresh_token, _context(grant_id, "refresh"))
        await conn.execute(
            "INSERT INTO xero_grants (grant_id, operator, key_id, access_token_enc,"
            " refresh_token_enc, access_expires_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (grant_id, operator, key_id, access, refresh, tokens.expires_at))
        self._cache[grant_id] = AccessToken(grant_id, tokens.access_token, tokens.expires_at)

    async def access_token(self, grant_id: str, *, rejected: str | None = None) -> str:
        """A valid access token; `rejected` is one Xero just answered 401 to."""
        cached = self._cache.get(grant_id)
        if cached is not None and cached.value != rejected and self._fresh(cached):
            return cached.value
        lock = self._locks.setdefault(grant_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(grant_id)
            if cached is not None and cached.value != rejected and self._fresh(cached):
                return cached.value
            token = await self._refresh_locked(grant_id, rejected)
            self._cache[grant_id] = token
            return token.value

    def _fresh(self, token: AccessToken) -> bool:
        return token.expires_at - self._margin > datetime.now(UTC)

    async def _refresh_locked(self, grant_id: str, rejected: str | None) -> AccessToken:
        broken: GrantBroken | None = None
        async with self._pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "SELECT key_id, access_token_enc, refresh_token_enc, access_expires_at, status"
                " FROM xero_grants WHERE grant_id = %s FOR UPDATE", (grant_id,))).fetchone()
            if row is None:
                raise GrantBroken(f"grant {grant_id} is not stored")
            key_id, access_enc, refresh_enc, expires_at, status = row
            if status != "active":
                raise GrantBroken(f"grant {grant_id} is {status}")
            stored = AccessToken(grant_id, self._keys.decrypt(
                key_id, bytes(access_enc), _context(grant_id, "access")), expires_at)
            register_secret(stored.value)
            if stored.value != rejected and self._fresh(stored):
                return stored  # another process refreshed while we waited for the lock
            refresh_token = self._keys.decrypt(key_id, bytes(refresh_enc),
                                               _context(grant_id, "refresh"))
            register_secret(refresh_token)
            try:
                tokens = await self._xero.refresh(refresh_token)
            except GrantBroken as exc:
                # Committed with this transaction; the caller is told after the commit.
                await self._mark_broken(conn, grant_id, str(exc))
                broken = exc
            else:
                new_key, access = self._keys.encrypt(tokens.access_token,
                                                     _context(grant_id, "access"))
                _, refresh = self._keys.encrypt(tokens.refresh_token,
                                                _context(grant_id, "refresh"))
                await conn.execute(
                    "UPDATE xero_grants SET key_id = %s, access_token_enc = %s,"
                    " refresh_token_enc = %s, access_expires_at = %s, refreshed_at = now(),"
                    " refreshes = refreshes + 1, last_error = NULL WHERE grant_id = %s",
                    (new_key, access, refresh, tokens.expires_at, grant_id))
        if broken is not None:
            log.error("xero.grant_broken", grant_id=grant_id)
            raise broken
        log.info("xero.token_refreshed", grant_id=grant_id)
        return AccessToken(grant_id, tokens.access_token, tokens.expires_at)

    @staticmethod
    async def _mark_broken(conn: Conn, grant_id: str, reason: str) -> None:
        # Committed even though the caller's attempt fails: the lock's transaction is ours.
        await conn.execute(
            "UPDATE xero_grants SET status = 'broken', last_error = %s WHERE grant_id = %s",
            (reason, grant_id))
        await conn.execute(
            "UPDATE connections SET status = 'broken', last_error = %s"
            " WHERE grant_id = %s AND status = 'active'", (reason, grant_id))

    async def refresh_token(self, grant_id: str) -> str | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT key_id, refresh_token_enc FROM xero_grants WHERE grant_id = %s",
                (grant_id,))).fetchone()
        if row is None:
            return None
        token = self._keys.decrypt(row[0], bytes(row[1]), _context(grant_id, "refresh"))
        register_secret(token)
        return token

    def forget(self, grant_id: str) -> None:
        self._cache.pop(grant_id, None)
