"""Connecting Xero organisations: the OAuth 2.0 authorization-code flow with PKCE.

`begin` stores a state bound to the operator (token `sub`) and to the operator's browser (a
random cookie whose hash is kept), with the PKCE verifier encrypted, for 10 minutes, and gives
the URL of Xero's consent page. `complete` accepts a state once, only from the browser that
began it, exchanges the code with the verifier, reads the organisations the consent reached
(`/connections`), and stores one grant (the token set, encrypted) and one connection per
organisation. The first organisation connected becomes the default connection, and changes
that were waiting for any connection are given to it.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from sync_service.app.credentials import KeyRing
from sync_service.app.grants import Grants
from sync_service.app.xero_api import XeroClient
from sync_service.domain import pkce
from sync_service.domain.errors import (
    AuthorizationRefused,
    ConnectionNotFound,
    GrantBroken,
    ProviderError,
    TargetNotConfigured,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Authorization:
    url: str
    binding: str  # the cookie value the callback must bring back
    state: str


@dataclass(frozen=True, slots=True)
class ConnectedOrganisation:
    connection_id: str
    name: str
    is_default: bool


class XeroConnections:
    def __init__(self, pool: AsyncConnectionPool, keys: KeyRing, xero: XeroClient | None,
                 grants: Grants | None, *, on_connected: Any = None) -> None:
        self._pool = pool
        self._keys = keys
        self._xero = xero
        self._grants = grants
        self._on_connected = on_connected

    def _client(self) -> tuple[XeroClient, Grants]:
        if self._xero is None or self._grants is None:
            raise TargetNotConfigured("Xero is not configured (XERO_CLIENT_ID is unset)")
        return self._xero, self._grants

    async def begin(self, operator: str) -> Authorization:
        xero, _ = self._client()
        verifier, state, binding = pkce.new_verifier(), pkce.new_state(), secrets.token_urlsafe(32)
        key_id, sealed = self._keys.encrypt(verifier, f"oauth_states:{state}")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO oauth_states (state, operator, verifier_key, verifier_enc,"
                " binding_hash, expires_at) VALUES (%s, %s, %s, %s, %s, %s)",
                (state, operator, key_id, sealed, pkce.binding_digest(binding),
                 datetime.now(UTC) + timedelta(seconds=pkce.STATE_TTL_S)))
            await conn.execute("DELETE FROM oauth_states WHERE expires_at < now() - interval '1 day'")
        log.info("xero.authorization_started", operator=operator)
        return Authorization(url=xero.authorize_url(state=state,
                                                    code_challenge=pkce.s256_challenge(verifier)),
                             binding=binding, state=state)

    async def complete(self, *, code: str, state: str, binding: str | None,
                       operator: str | None = None) -> list[ConnectedOrganisation]:
        xero, grants = self._client()
        owner, verifier = await self._consume_state(state, binding, operator)
        try:
            tokens = await xero.exchange_code(code, verifier)
            tenants = await xero.tenants(tokens.access_token)
        except (GrantBroken, ProviderError) as exc:
            log.warning("xero.authorization_refused", operator=owner, error=str(exc))
            raise AuthorizationRefused("Xero refused the authorization code") from None
        if not tenants:
            raise AuthorizationRefused("the consent reached no Xero organisation")
        grant_id = str(uuid.uuid4())
        async with self._pool.connection() as conn, conn.transaction():
            await grants.store(conn, grant_id, owner, tokens)
            for tenant in tenants:
                await conn.execute(
                    "INSERT INTO connections (connection_id, target, grant_id, xero_connection_id,"
                    " name) VALUES (%s, 'xero', %s, %s, %s) ON CONFLICT (connection_id) DO UPDATE"
                    " SET grant_id = EXCLUDED.grant_id, xero_connection_id ="
                    " EXCLUDED.xero_connection_id, name = EXCLUDED.name, status = 'active',"
                    " last_error = NULL",
                    (tenant.tenant_id, grant_id, tenant.connection_id, tenant.name))
            await conn.execute(
                "UPDATE connections SET is_default = true WHERE connection_id = %s AND NOT EXISTS"
                " (SELECT 1 FROM connections WHERE is_default AND target = 'xero')",
                (tenants[0].tenant_id,))
            await conn.execute(
                "UPDATE sync_jobs SET connection_id = (SELECT connection_id FROM connections"
                " WHERE is_default AND target = 'xero') WHERE connection_id IS NULL")
            # Changes that waited for a reconnection go now.
            await conn.execute(
                "UPDATE sync_jobs SET next_attempt_at = now() WHERE status = 'pending'"
                " AND connection_id = ANY(%s)", ([t.tenant_id for t in tenants],))
            rows = await (await conn.execute(
                "SELECT connection_id, name, is_default FROM connections WHERE grant_id = %s"
                " ORDER BY name", (grant_id,))).fetchall()
        log.info("xero.connected", operator=owner, organisations=len(rows))
        if self._on_connected is not None:
            self._on_connected()
        return [ConnectedOrganisation(r[0], r[1], r[2]) for r in rows]

    async def _consume_state(self, state: str, binding: str | None, operator: str | None
                             ) -> tuple[str, str]:
        # Consumed in its own transaction, before the code is used: a replay finds it spent
        # whatever happens to this attempt.
        async with self._pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "SELECT operator, verifier_key, verifier_enc, binding_hash, expires_at,"
                " consumed_at FROM oauth_states WHERE state = %s FOR UPDATE", (state,))).fetchone()
            if row is None:
                raise AuthorizationRefused("unknown state")
            owner, key_id, sealed, binding_hash, expires_at, consumed_at = row
            if consumed_at is not None:
                raise AuthorizationRefused("this authorization was already used")
            await conn.execute("UPDATE oauth_states SET consumed_at = now() WHERE state = %s",
                               (state,))
        if expires_at < datetime.now(UTC):
            raise AuthorizationRefused("the authorization expired; start again")
        if binding is None or not hmac.compare_digest(pkce.binding_digest(binding), binding_hash):
            log.warning("xero.state_from_another_browser", operator=owner)
            raise AuthorizationRefused("the state was not issued to this browser")
        if operator is not None and operator != owner:
            raise AuthorizationRefused("the state belongs to another operator")
        return owner, self._keys.decrypt(key_id, bytes(sealed), f"oauth_states:{state}")

    async def disconnect(self, connection_id: str) -> None:
        xero, grants = self._client()
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT grant_id, xero_connection_id, status FROM connections"
                " WHERE connection_id = %s AND target = 'xero'", (connection_id,))).fetchone()
        if row is None or row[2] == "disconnected":
            raise ConnectionNotFound(connection_id)
        grant_id, xero_connection_id, status = row
        if status == "active" and grant_id is not None:
            try:
                token = await grants.access_token(grant_id)
                if xero_connection_id:
                    await xero.delete_connection(token, xero_connection_id)
            except ProviderError as exc:
                log.warning("xero.disconnect_unconfirmed", connection_id=connection_id,
                            error=str(exc))
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE connections SET status = 'disconnected', is_default = false"
                " WHERE connection_id = %s", (connection_id,))
            remaining = await (await conn.execute(
                "SELECT count(*) FROM connections WHERE grant_id = %s AND status <> 'disconnected'",
                (grant_id,))).fetchone()
        if grant_id is not None and remaining is not None and remaining[0] == 0:
            refresh = await grants.refresh_token(grant_id)
            if refresh is not None:
                try:
                    await xero.revoke(refresh)
                except ProviderError as exc:
                    log.warning("xero.revocation_failed", grant_id=grant_id, error=str(exc))
            async with self._pool.connection() as conn:
                await conn.execute("UPDATE xero_grants SET status = 'revoked' WHERE grant_id = %s",
                                   (grant_id,))
            grants.forget(grant_id)
        log.info("xero.disconnected", connection_id=connection_id)
