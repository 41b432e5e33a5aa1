"""Two sync processes share the Xero push queue, and each organisation's limits hold across
both: every invoice exactly once, no 429 from the fake Xero, and no rolling window of any
organisation holding more calls than its limit, also when one process is killed mid-drain and
the other takes its organisations over (app/ownership.py)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import msgspec
import nats
import psycopg
import pytest

from contracts.invoicing import InvoiceIssued, InvoiceLine, VatBreakdown
from services.database import conninfo
from services.embedded import free_port
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.fakes.xero import FakeXero
from tests.integration.own_database import own_database
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration

ORGANISATIONS = 6
INVOICES_PER_ORGANISATION = 60
# Xero's limits scaled down so that a drain takes seconds, yet long enough for a handover:
# 10 calls per rolling 2 s per organisation (5 a second), 5 concurrent.
CALLS_PER_WINDOW = 10
WINDOW_S = 2.0
ENCRYPTION_KEY = "t1:" + base64.b64encode(b"p" * 32).decode()
AUTH = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops@example.test",
                                                scopes=["operator"])}


@pytest.fixture
def fake_xero() -> Iterator[FakeXero]:
    fake = FakeXero(
        organisations=[{"tenantId": str(uuid.uuid4()), "tenantName": f"Org {n}"}
                       for n in range(ORGANISATIONS)],
        minute_limit=CALLS_PER_WINDOW, minute_window_s=WINDOW_S)
    with fake:
        yield fake


@pytest.fixture
def database(infra: Infra) -> Iterator[Infra]:
    with own_database(infra, "wt_sync2_processes") as own:
        yield own


def start_processes(database: Infra, fake: FakeXero, log_dir: Any, count: int
                    ) -> list[ServiceProcess]:
    processes = []
    for _ in range(count):
        port = free_port()
        env = database.service_env(
            XERO_CLIENT_ID=fake.client_id, XERO_LOGIN_BASE=fake.url,
            XERO_IDENTITY_BASE=fake.url, XERO_API_BASE=fake.url,
            XERO_REDIRECT_URI=f"http://127.0.0.1:{port}/v1/connections/xero/callback",
            SYNC_ENCRYPTION_KEYS=ENCRYPTION_KEY,
            XERO_CALLS_PER_MINUTE=str(CALLS_PER_WINDOW), XERO_MINUTE_S=str(WINDOW_S),
            SYNC_POLL_INTERVAL_S="0.2", SYNC_LEASE_S="10", OUTBOX_POLL_INTERVAL_S="0.2",
            DB_POOL_SIZE_MAX="5", LOG_LEVEL="INFO")
        processes.append(ServiceProcess("sync_service", env, port=port).start(log_dir))
    for process in processes:
        process.wait_ready()
    return processes


def stop_all(processes: list[ServiceProcess]) -> None:
    for process in processes:
        assert process.process is not None
        if process.process.poll() is None:
            process.stop()


def connect_and_assign(service: ServiceProcess, fake: FakeXero) -> list[uuid.UUID]:
    """One OAuth dance through one process; one account per organisation."""
    jar = httpx.Client()
    start = jar.get(f"{service.url}/v1/connections/xero/authorize", headers=AUTH)
    consent = jar.get(start.headers["location"])
    query = parse_qs(urlparse(consent.headers["location"]).query)
    jar.get(f"{service.url}/v1/connections/xero/callback",
            params={"code": query["code"][0], "state": query["state"][0]}).raise_for_status()
    accounts = []
    for organisation in fake.organisations:
        account = uuid.uuid4()
        httpx.put(f"{service.url}/v1/sync/accounts/{account}/connection",
                  json={"connection_id": organisation["tenantId"]},
                  headers=AUTH).raise_for_status()
        accounts.append(account)
    return accounts


async def publish_invoices(nats_url: str, accounts: list[uuid.UUID]) -> list[str]:
    issued = datetime(2026, 11, 1, tzinfo=UTC)
    line = InvoiceLine(description="SMS to UK", product="sms", quantity=1000,
                       unit_price="0.0391", net_amount="39.10", vat_rate="20",
                       vat_treatment="standard", vat_amount="7.82")
    nc = await nats.connect(nats_url)
    numbers = []
    run = uuid.uuid4().hex[:6]  # message ids differ from run to run (JetStream de-duplicates)
    try:
        js = nc.jetstream()
        for n in range(INVOICES_PER_ORGANISATION * len(accounts)):
            message = InvoiceIssued(
                event_id=f"evt-{run}-{n}", invoice_id=f"inv-{run}-{n:05d}",
                number=f"INV-{run}-{n:05d}",
                account_id=accounts[n % len(accounts)], currency="GBP", period="2026-10",
                lines=[line], vat_breakdown=[VatBreakdown(
                    vat_rate="20", vat_treatment="standard", net_amount="39.10",
                    vat_amount="7.82")],
                subtotal="39.10", vat_total="7.82", total="46.92", issued_at=issued,
                due_at=issued + timedelta(days=30))
            await js.publish("invoicing.v1.issued", msgspec.json.encode(message),
                             headers={"Nats-Msg-Id": message.event_id})
            numbers.append(message.number)
    finally:
        await nc.close()
    return numbers


def owners(database: Infra) -> dict[str, str]:
    with psycopg.connect(conninfo(database.database_url, options="-c search_path=sync"),
                         autocommit=True) as conn:
        rows = conn.execute("SELECT connection_id, owner FROM connection_leases"
                            " WHERE owner IS NOT NULL AND expires_at > now()").fetchall()
    return {str(c): str(o) for c, o in rows}


def eventually(check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def pushed(fake: FakeXero) -> int:
    return sum(len(invoices) for invoices in fake.invoices.values())


def assert_exactly_once_within_limits(fake: FakeXero, numbers: list[str]) -> None:
    found = [i["InvoiceNumber"] for t in fake.invoices for i in fake.invoices[t].values()]
    assert sorted(found) == sorted(numbers)
    assert fake.rate_limited == [], fake.rate_limited[:5]
    for organisation in fake.organisations:
        assert fake.busiest_window(organisation["tenantId"]) <= CALLS_PER_WINDOW


async def test_two_processes_share_the_organisations_and_keep_their_limits(
    infra: Infra, database: Infra, fake_xero: FakeXero, tmp_path: Any
) -> None:
    processes = start_processes(database, fake_xero, tmp_path, 2)
    try:
        accounts = connect_and_assign(processes[0], fake_xero)
        numbers = await publish_invoices(infra.nats_url, accounts)
        seen_owners: set[str] = set()
        shown_owners: set[str] = set()

        def drained() -> bool:
            seen_owners.update(owners(database).values())
            view = httpx.get(f"{processes[1].url}/v1/sync/status", headers=AUTH).json()
            xero = next(t for t in view["targets"] if t["target"] == "xero")
            shown_owners.update(c["owner"] for c in xero["connections"] if c["owner"])
            return pushed(fake_xero) >= len(numbers)

        await asyncio.to_thread(eventually, drained, 90)
        assert len(seen_owners) == 2  # both drained some organisations
        assert shown_owners == seen_owners  # and the status page says which
        assert_exactly_once_within_limits(fake_xero, numbers)
        # The status page reads the database: the same from either process.
        views = [httpx.get(f"{p.url}/v1/sync/status", headers=AUTH).json() for p in processes]
        xero = [next(t for t in v["targets"] if t["target"] == "xero") for v in views]
        assert xero[0]["backlog"] == xero[1]["backlog"] == 0
    finally:
        stop_all(processes)


async def test_a_killed_process_hands_its_organisations_to_the_survivor(
    infra: Infra, database: Infra, fake_xero: FakeXero, tmp_path: Any
) -> None:
    survivor, victim = start_processes(database, fake_xero, tmp_path, 2)
    try:
        accounts = connect_and_assign(survivor, fake_xero)
        numbers = await publish_invoices(infra.nats_url, accounts)

        def shared() -> bool:
            return len(set(owners(database).values())) == 2 and pushed(fake_xero) >= 10

        await asyncio.to_thread(eventually, shared, 30)
        assert victim.process is not None
        victim_orgs = {c for c, o in owners(database).items() if o.split(":")[1]
                       == str(victim.process.pid)}
        assert victim_orgs
        victim.process.kill()  # kill -9: no handover, leases and jobs left behind
        victim.process.wait()
        killed_at = time.monotonic()

        def taken_over() -> bool:
            return victim_orgs <= set(owners(database))
        await asyncio.to_thread(eventually, taken_over, 20)
        # The lease expires (10 s) before anyone takes it; then within a renewal or two.
        assert time.monotonic() - killed_at < 15
        await asyncio.to_thread(eventually, lambda: pushed(fake_xero) >= len(numbers), 90)
        assert_exactly_once_within_limits(fake_xero, numbers)
    finally:
        stop_all([survivor, victim])


async def test_a_process_joining_mid_drain_is_handed_half_the_organisations(
    infra: Infra, database: Infra, fake_xero: FakeXero, tmp_path: Any
) -> None:
    """The first process holds every organisation at full pace; the second joins: the first
    stops the lanes of its surplus, then clears their leases with their pacing, and the
    second carries on from it (no window over the limit at the handover)."""
    (first,) = start_processes(database, fake_xero, tmp_path, 1)
    processes = [first]
    try:
        accounts = connect_and_assign(first, fake_xero)
        numbers = await publish_invoices(infra.nats_url, accounts)
        await asyncio.to_thread(
            eventually, lambda: len(owners(database)) == ORGANISATIONS
            and pushed(fake_xero) >= 30, 30)
        processes += start_processes(database, fake_xero, tmp_path, 1)
        half = ORGANISATIONS // 2

        def handed_over() -> bool:
            held = list(owners(database).values())
            return len(set(held)) == 2 and all(held.count(m) == half for m in set(held))

        await asyncio.to_thread(eventually, handed_over, 20)
        assert pushed(fake_xero) < len(numbers)  # mid-drain
        await asyncio.to_thread(eventually, lambda: pushed(fake_xero) >= len(numbers), 90)
        assert_exactly_once_within_limits(fake_xero, numbers)
    finally:
        stop_all(processes)
