"""Token refresh among several processes, a rotated token surviving a crash, and pacing per
organisation against the fake Xero (its limits scaled down so the test runs in seconds)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

import sync_service
from services.database import apply_migrations, create_pool
from sync_service.app.credentials import KeyRing, parse_keys
from sync_service.app.grants import Grants
from sync_service.app.pacing import Limits, Pacer
from sync_service.app.xero_api import XeroClient
from sync_service.domain import pkce
from sync_service.domain.errors import ProviderRateLimited, ProviderUnauthorized
from tests.conftest import Infra
from tests.fakes.xero import FakeXero

pytestmark = pytest.mark.integration

KEYS = "p1:" + base64.b64encode(b"p" * 32).decode()
REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture
def fake() -> Iterator[FakeXero]:
    with FakeXero(organisations=[{"tenantId": str(uuid.uuid4()), "tenantName": f"O{n}"}
                                 for n in range(2)],
                  minute_limit=10, minute_window_s=1.0) as fake:
        yield fake


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[Any]:
    migrations = Path(sync_service.__file__).parent / "migrations"
    await asyncio.to_thread(apply_migrations, infra.database_url, "sync", migrations)
    pool = create_pool(infra.database_url, "sync", max_size=12, name="sync-test")
    await pool.open(wait=True)
    yield pool
    await pool.close()


def client(fake: FakeXero, pacer: Pacer) -> XeroClient:
    return XeroClient(client_id=fake.client_id, client_secret=None, redirect_uri=REDIRECT,
                      scopes="offline_access accounting.invoices", login_base=fake.url,
                      identity_base=fake.url, api_base=fake.url, timeout_s=5, pacer=pacer)


def pacer(calls: int = 10, window_s: float = 1.0) -> Pacer:
    return Pacer(Limits(calls_per_window=calls, window_s=window_s, calls_per_day=5000,
                        concurrent_max=5))


async def connected_grant(fake: FakeXero, xero: XeroClient, grants: Grants, pool: Any) -> str:
    verifier = pkce.new_verifier()
    url = xero.authorize_url(state="s", code_challenge=pkce.s256_challenge(verifier))
    redirect = httpx.get(url).headers["location"]
    code = parse_qs(urlparse(redirect).query)["code"][0]
    tokens = await xero.exchange_code(code, verifier)
    grant_id = str(uuid.uuid4())
    async with pool.connection() as conn:
        await grants.store(conn, grant_id, "ops", tokens)
    return grant_id


async def test_ten_pushes_in_two_processes_on_an_expired_token_refresh_once(
    fake: FakeXero, pool: Any
) -> None:
    ring = KeyRing(parse_keys(KEYS))
    xero_a, xero_b = client(fake, pacer(100)), client(fake, pacer(100))
    # Two processes: each its own client, cache and locks; one database.
    grants_a = Grants(pool, ring, xero_a, refresh_margin_s=60)
    grants_b = Grants(pool, ring, xero_b, refresh_margin_s=60)
    grant_id = await connected_grant(fake, xero_a, grants_a, pool)
    tenant = fake.organisations[0]["tenantId"]
    fake.expire_access_tokens()
    before = fake.refresh_count()

    async def push(grants: Grants, xero: XeroClient) -> None:
        token = await grants.access_token(grant_id)
        try:
            await xero.call(tenant, token, "GET", "/Contacts")
        except ProviderUnauthorized:
            token = await grants.access_token(grant_id, rejected=token)
            await xero.call(tenant, token, "GET", "/Contacts")

    await asyncio.gather(*(push(grants_a, xero_a) if n % 2 else push(grants_b, xero_b)
                           for n in range(10)))
    assert fake.refresh_count() - before == 1
    await xero_a.aclose()
    await xero_b.aclose()


class _CrashAfterRotation(KeyRing):
    """Dies after Xero rotated the token and before the new one is stored."""

    crash = False

    def encrypt(self, plaintext: str, context: str) -> tuple[str, bytes]:
        if self.crash:
            self.crash = False
            raise RuntimeError("process died")
        return super().encrypt(plaintext, context)


async def test_a_rotated_token_is_not_lost_when_the_process_dies_before_storing_it(
    fake: FakeXero, pool: Any
) -> None:
    ring = _CrashAfterRotation(parse_keys(KEYS))
    xero = client(fake, pacer(100))
    grants = Grants(pool, ring, xero, refresh_margin_s=60)
    grant_id = await connected_grant(fake, xero, grants, pool)
    fake.expire_access_tokens()
    stale = await grants.access_token(grant_id)
    ring.crash = True
    with pytest.raises(RuntimeError):
        await grants.access_token(grant_id, rejected=stale)
    # Restarted: the previous refresh token, still stored, is inside Xero's grace period.
    restarted = Grants(pool, KeyRing(parse_keys(KEYS)), xero, refresh_margin_s=60)
    token = await restarted.access_token(grant_id, rejected=stale)
    await xero.call(fake.organisations[0]["tenantId"], token, "GET", "/Contacts")
    assert fake.refresh_count() == 2
    await xero.aclose()


async def test_pacing_is_per_organisation_and_provokes_no_429(fake: FakeXero, pool: Any) -> None:
    ring = KeyRing(parse_keys(KEYS))
    xero = client(fake, pacer(calls=10, window_s=1.0))
    grants = Grants(pool, ring, xero, refresh_margin_s=60)
    grant_id = await connected_grant(fake, xero, grants, pool)
    token = await grants.access_token(grant_id)
    tenants = [o["tenantId"] for o in fake.organisations]
    calls_each = 25
    started = time.monotonic()
    await asyncio.gather(*(xero.call(t, token, "GET", "/Contacts")
                           for t in tenants for _ in range(calls_each)))
    elapsed_s = time.monotonic() - started
    assert fake.rate_limited == []
    # 25 calls at 10 per second take over 2 s; two organisations at once, not one after the
    # other (a global limit would take twice as long).
    assert 2.0 <= elapsed_s < 4.0, elapsed_s
    await xero.aclose()


async def test_a_429_pauses_only_that_organisation_for_its_retry_after(
    fake: FakeXero, pool: Any
) -> None:
    ring = KeyRing(parse_keys(KEYS))
    fake.minute_window_s = 3.0  # Xero allows less than we were told
    xero = client(fake, pacer(calls=100, window_s=1.0))
    grants = Grants(pool, ring, xero, refresh_margin_s=60)
    grant_id = await connected_grant(fake, xero, grants, pool)
    token = await grants.access_token(grant_id)
    busy, quiet = (o["tenantId"] for o in fake.organisations)
    limited: ProviderRateLimited | None = None
    for _ in range(15):
        try:
            await xero.call(busy, token, "GET", "/Contacts")
        except ProviderRateLimited as exc:
            limited = exc
            break
    assert limited is not None and limited.retry_after_s >= 1
    assert xero.pacer.paused_for_s(busy) > 0.5
    assert xero.pacer.paused_for_s(quiet) == 0
    started = time.monotonic()
    await xero.call(quiet, token, "GET", "/Contacts")  # not held back by the other's pause
    assert time.monotonic() - started < 0.5
    await xero.aclose()
