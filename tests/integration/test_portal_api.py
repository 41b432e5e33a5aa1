"""The portal query API over real PostgreSQL, served in-process (no NATS needed): statement
pages, CSV, usage, freshness, the operators' audit stream, and tenant isolation through every
route and filter, enforced by the routes and by row-level security."""

from __future__ import annotations

import csv
import io
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from ledger_service import http_queries
from ledger_service.app.ledger import Ledger, ledger_env
from ledger_service.domain.chain import GENESIS_HASH, compute_chain_hash
from ledger_service.http import EXCEPTION_STATUSES, LedgerServices, router
from ledger_service.messaging import Writer
from ledger_service.projections.reads import decode_cursor
from ledger_service.projections.runner import ProjectionRunner
from ledger_service.reader import PRIMARY, Reader, ReaderConfig, Readers
from services.database import conninfo, create_pool, eventsourcing_env
from services.http import DEVELOPMENT_JWT_SECRET, JwtVerifier, create_app, mint_token
from services.read_replica import ReadRouting
from tests.conftest import Infra
from tests.integration.test_projections_workload import Clock, Workload, build, runner_for

pytestmark = pytest.mark.integration


def bearer(*scopes: str, tenant: UUID | str | None = None) -> dict[str, str]:
    token = mint_token(DEVELOPMENT_JWT_SECRET, sub="portal-test", scopes=list(scopes),
                       tenant_id=str(tenant) if tenant else None)
    return {"Authorization": f"Bearer {token}"}


OPERATOR = bearer("operator")


@dataclass
class Portal:
    client: TestClient[Litestar]
    ledger: Ledger
    workload: Workload
    runner: ProjectionRunner
    database_url: str

    def project(self) -> None:
        self.runner.catch_up()

    def account(self, credit: str = "20.00", usage_batches: int = 3) -> UUID:
        account_id = self.workload.open("prepay")
        index = len(self.workload.accounts) - 1
        self.workload.grant(index, "purchased", credit)
        for _ in range(usage_batches):
            self.workload.use(index, 2)
        self.workload.adjust(index, "credit", "0.50")
        self.project()
        return account_id

    def entries(self, account_id: UUID, headers: dict[str, str] = OPERATOR,
                **params: Any) -> Any:
        return self.client.get(f"/v1/accounts/{account_id}/entries", params=params,
                               headers=headers)


def build_app(services: LedgerServices, queries: http_queries.QueryServices,
              pool: Any) -> Litestar:
    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=10)
        try:
            yield
        finally:
            await pool.close()

    return create_app(
        title="ledger (test)", version="0", readiness_checks={},
        route_handlers=[router(services), *http_queries.routers(queries)],
        auth=JwtVerifier(secret=DEVELOPMENT_JWT_SECRET), lifespan=[lifespan],
        exception_statuses={**EXCEPTION_STATUSES, **http_queries.EXCEPTION_STATUSES})


@pytest.fixture(scope="module")
def portal(infra: Infra) -> Iterator[Portal]:
    clock = Clock()
    ledger = build(infra.database_url, clock)
    services = LedgerServices()
    services.ledger, services.writer = ledger, Writer()
    # A reader process, as the service runs it: the account loads cross the process boundary.
    reader = Reader(ReaderConfig({PRIMARY: ledger_env(eventsourcing_env(infra.database_url,
                                                                        "ledger"))}), 1)
    pool = create_pool(infra.database_url, "ledger", max_size=6, name="portal-test")
    services.pool = pool
    services.readers = Readers(reader, ReadRouting(pool))
    app = build_app(services, http_queries.QueryServices(services, pool), pool)
    runner = runner_for(ledger, infra.database_url)
    try:
        with TestClient(app=app) as client:
            yield Portal(client, ledger, Workload(ledger, clock), runner, infra.database_url)
    finally:
        runner.close()
        services.writer.close()
        services.readers.close()
        ledger.app.close()


# ------------------------------------------------------------------ statement


def test_entries_are_newest_first_with_running_balances_and_freshness(portal: Portal) -> None:
    account_id = portal.account()
    response = portal.entries(account_id)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["kind"] for i in items] == ["adjustment"] + ["usage"] * 6 + ["grant"]
    assert items[0]["balance_after"] == portal.client.get(
        f"/v1/accounts/{account_id}/balance", headers=OPERATOR).json()["balance"]
    assert items[-1] == {**items[-1], "amount": "20.00", "balance_after": "20.00"}
    assert items[1]["description"].startswith("sms x ")
    assert items[1]["reference"].startswith("campaign-")
    assert response.json()["next_cursor"] is None
    headers = response.headers
    assert int(headers["X-Projection-Position"]) == int(headers["X-Log-Position"]) > 0
    assert headers["X-Projection-Updated-At"]


def test_balance_comes_from_the_projection_only_when_it_has_every_event(portal: Portal) -> None:
    account_id = portal.account()
    path = f"/v1/accounts/{account_id}/balance"
    projected = portal.client.get(path, headers=OPERATOR)
    assert projected.status_code == 200, projected.text
    assert "X-Projection-Position" in projected.headers  # answered from the balances row
    version = int(projected.headers["X-Account-Version"])

    portal.workload.use(portal.workload.accounts.index(account_id), 1)  # not projected yet
    fresh = portal.client.get(path, headers=OPERATOR)
    assert fresh.status_code == 200, fresh.text
    assert "X-Projection-Position" not in fresh.headers  # the account itself answered
    assert int(fresh.headers["X-Account-Version"]) == version + 1
    assert fresh.json()["balance"] != projected.json()["balance"]  # read-your-writes

    portal.project()
    caught_up = portal.client.get(path, headers=OPERATOR)
    assert "X-Projection-Position" in caught_up.headers
    assert {**caught_up.json(), "as_of": None} == {**fresh.json(), "as_of": None}
    missing = portal.client.get(f"/v1/accounts/{uuid.uuid4()}/balance", headers=OPERATOR)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_a_lagging_projection_is_visible_in_the_headers(portal: Portal) -> None:
    account_id = portal.account()
    portal.workload.use(portal.workload.accounts.index(account_id), 1)  # not projected yet
    response = portal.entries(account_id)
    assert int(response.headers["X-Projection-Position"]) < int(response.headers["X-Log-Position"])
    assert len(response.json()["items"]) == 8
    portal.project()
    response = portal.entries(account_id)
    assert response.headers["X-Projection-Position"] == response.headers["X-Log-Position"]
    assert len(response.json()["items"]) == 9


def test_kind_from_and_to_filter_the_statement(portal: Portal) -> None:
    account_id = portal.account()
    everything = portal.entries(account_id).json()["items"]
    usage = portal.entries(account_id, kind="usage").json()["items"]
    assert usage == [i for i in everything if i["kind"] == "usage"]
    both = portal.entries(account_id, kind=["grant", "adjustment"]).json()["items"]
    assert {i["kind"] for i in both} == {"grant", "adjustment"}
    assert portal.entries(account_id, kind="grant,adjustment").json()["items"] == both
    middle = everything[3]["occurred_at"]
    newer = portal.entries(account_id, **{"from": middle}).json()["items"]
    older = portal.entries(account_id, to=middle).json()["items"]
    assert newer + older == everything
    assert all(i["occurred_at"] >= middle for i in newer)


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 501}, "limit"), ({"limit": 0}, "limit"), ({"kind": "bonus"}, "kind"),
    ({"cursor": "bm9wZQ"}, "cursor"), ({"from": "2026-03-01T10:00:00"}, "from"),
])
def test_bad_parameters_are_400_problems_naming_the_field(portal: Portal, params: dict[str, Any],
                                                          field: str) -> None:
    account_id = portal.account(usage_batches=0)
    response = portal.entries(account_id, **params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == field for e in response.json()["errors"])


def test_pages_of_500_are_allowed_and_the_cursor_walks_the_whole_statement(portal: Portal) -> None:
    account_id = portal.account(usage_batches=40)  # 80 usage lines + grant + adjustment
    pages, cursor = [], None
    while True:
        body = portal.entries(account_id, limit=7, **({"cursor": cursor} if cursor else {})).json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    walked = [i for page in pages for i in page]
    assert walked == portal.entries(account_id, limit=500).json()["items"]
    assert len(walked) == 82 and all(len(p) == 7 for p in pages[:-1])


def test_cursor_paging_returns_every_entry_exactly_once_while_new_entries_arrive(
        portal: Portal) -> None:
    account_id = portal.account(usage_batches=30)
    index = portal.workload.accounts.index(account_id)
    existing = {i["entry_id"] for i in portal.entries(account_id, limit=500).json()["items"]}
    seen: list[str] = []
    cursor = None
    while True:
        body = portal.entries(account_id, limit=5, **({"cursor": cursor} if cursor else {})).json()
        seen.extend(i["entry_id"] for i in body["items"])
        portal.workload.use(index, 3)  # new entries between every two pages
        portal.workload.adjust(index, "debit", "0.01")
        portal.project()
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == existing


def test_csv_streams_the_whole_filtered_statement(portal: Portal) -> None:
    account_id = portal.account(usage_batches=700)  # 1,400 lines: more than one fetch round
    csv_headers = {**OPERATOR, "Accept": "text/csv"}
    with portal.client.stream("GET", f"/v1/accounts/{account_id}/entries",
                              headers=csv_headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "X-Projection-Position" in response.headers
        text = "".join(response.iter_text())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 1_402
    json_items = portal.entries(account_id, limit=500).json()["items"]
    assert [r["entry_id"] for r in rows[:500]] == [i["entry_id"] for i in json_items]
    assert rows[0]["amount"] == json_items[0]["amount"] and rows[0]["currency"] == "GBP"
    only_usage = portal.client.get(f"/v1/accounts/{account_id}/entries",
                                   params={"kind": "grant"}, headers=csv_headers)
    assert [r["kind"] for r in csv.DictReader(io.StringIO(only_usage.text))] == ["grant"]


# ------------------------------------------------------------------ usage


def test_usage_by_day_and_by_month(portal: Portal) -> None:
    account_id = portal.account(usage_batches=0)
    index = portal.workload.accounts.index(account_id)
    portal.workload.use(index, 2)  # 2 lines of quantity 3 (the workload's 1 + 2 % 3)
    portal.workload.clock.advance(86_400)
    portal.workload.use(index, 1)
    portal.workload.use(index, 1, product="rcs_basic")
    portal.project()
    by_day = portal.client.get(f"/v1/accounts/{account_id}/usage", headers=OPERATOR)
    assert by_day.status_code == 200, by_day.text
    body = by_day.json()
    assert body["currency"] == "GBP" and body["group_by"] == "day"
    days = [(i["period"], i["product"], i["quantity"]) for i in body["items"]]
    assert len(days) == 3 and days[0][2] == 6 and days[1][1:] == ("rcs_basic", 2)
    assert days[0][0] < days[1][0] == days[2][0]
    by_month = portal.client.get(f"/v1/accounts/{account_id}/usage",
                                 params={"group_by": "month"}, headers=OPERATOR).json()
    assert {(i["product"], i["quantity"]) for i in by_month["items"]} <= {
        ("sms", 8), ("rcs_basic", 2), ("sms", 6), ("sms", 2)}
    assert all(len(i["period"]) == 7 for i in by_month["items"])
    first_day = days[0][0]
    only_first = portal.client.get(f"/v1/accounts/{account_id}/usage", headers=OPERATOR,
                                   params={"from": first_day, "to": days[1][0]}).json()
    assert [i["period"] for i in only_first["items"]] == [first_day]
    bad = portal.client.get(f"/v1/accounts/{account_id}/usage", headers=OPERATOR,
                            params={"group_by": "week"})
    assert bad.status_code == 400


# ------------------------------------------------------------------ isolation


def test_a_portal_token_reads_only_its_own_tenant_through_every_route_and_filter(
        portal: Portal) -> None:
    mine, theirs = portal.account(), portal.account()
    me = bearer("portal", tenant=mine)
    everyone_elses = [
        ("GET", f"/v1/accounts/{theirs}", {}, {}),
        ("GET", f"/v1/accounts/{theirs}/balance", {}, {}),
        ("GET", f"/v1/accounts/{theirs}/balance", {"as_of": "2026-03-01T10:00:00Z"}, {}),
        ("GET", f"/v1/accounts/{theirs}/entries", {}, {}),
        ("GET", f"/v1/accounts/{theirs}/entries", {"kind": "usage", "limit": 500}, {}),
        ("GET", f"/v1/accounts/{theirs}/entries",
         {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, {}),
        ("GET", f"/v1/accounts/{theirs}/entries", {}, {"Accept": "text/csv"}),
        ("GET", f"/v1/accounts/{theirs}/entries", {"kind": "grant"}, {"Accept": "text/csv"}),
        ("GET", f"/v1/accounts/{theirs}/usage", {}, {}),
        ("GET", f"/v1/accounts/{theirs}/usage", {"group_by": "month"}, {}),
        ("GET", f"/v1/accounts/{uuid.uuid4()}/entries", {}, {}),
    ]
    own_cursor = portal.entries(mine, headers=me, limit=1).json()["next_cursor"]
    everyone_elses.append(("GET", f"/v1/accounts/{theirs}/entries", {"cursor": own_cursor}, {}))
    for method, path, params, extra in everyone_elses:
        response = portal.client.request(method, path, params=params, headers={**me, **extra})
        assert response.status_code == 404, (path, params, response.text)
        assert str(theirs) not in response.text.replace(path, "") or "not found" in response.text
    for path in (f"/v1/accounts/{mine}/entries", f"/v1/accounts/{mine}/usage",
                 f"/v1/accounts/{mine}/balance"):
        assert portal.client.get(path, headers=me).status_code == 200, path
    audit = portal.client.get(f"/v1/audit/accounts/{mine}/events", headers=me)
    assert audit.status_code == 403  # operators only, even for one's own account
    no_tenant = bearer("portal")
    assert portal.entries(mine, headers=no_tenant).status_code == 404
    assert portal.client.get(f"/v1/accounts/{mine}/entries").status_code == 401


def test_row_level_security_is_fail_closed(portal: Portal) -> None:
    mine, theirs = portal.account(), portal.account()
    options = "-c search_path=ledger"
    with psycopg.connect(conninfo(portal.database_url, options=options)) as conn:
        tables = ("balances", "statement_entries", "usage_daily", "open_holds")
        owner_sees = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in tables}  # noqa: S608
        assert all(c is not None and c[0] > 0 for t, c in owner_sees.items() if t != "open_holds")
        conn.execute("SET ROLE ledger_reader")
        for table in tables:  # no tenant set: nothing, not everything
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table  # noqa: S608
        conn.execute("SELECT set_config('ledger.tenant_id', %s, false)", (str(mine),))
        # a query that forgets its WHERE still sees one tenant only
        seen = conn.execute("SELECT DISTINCT account_id FROM statement_entries").fetchall()
        assert seen == [(mine,)]
        assert conn.execute("SELECT count(*) FROM balances WHERE account_id = %s",
                            (theirs,)).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM ledger_events")
        conn.rollback()
        conn.execute("SET ROLE ledger_reader")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM balances")


def test_reads_under_concurrency_never_cross_tenants(portal: Portal) -> None:
    """Pooled connections are reused between tenants: SET LOCAL must not leak."""
    accounts = [portal.account(usage_batches=1) for _ in range(4)]
    failures: list[str] = []

    def read(account_id: UUID) -> None:
        headers = bearer("portal", tenant=account_id)
        for _ in range(15):
            for item_path in ("entries", "usage"):
                response = portal.client.get(f"/v1/accounts/{account_id}/{item_path}",
                                             headers=headers)
                if response.status_code != 200:
                    failures.append(response.text)
            ids = {i["entry_id"] for i in portal.entries(account_id, headers=headers).json()["items"]}
            own = {i["entry_id"] for i in portal.entries(account_id).json()["items"]}
            if ids != own:
                failures.append(f"{account_id}: {ids ^ own}")

    threads = [threading.Thread(target=read, args=(a,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ------------------------------------------------------------------ audit


def test_the_audit_stream_is_the_log_with_a_verifiable_hash_chain(portal: Portal) -> None:
    account_id = portal.account(usage_batches=5)
    items, cursor = [], None
    while True:
        response = portal.client.get(f"/v1/audit/accounts/{account_id}/events", headers=OPERATOR,
                                     params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        items.extend(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert [i["position"] for i in items] == list(range(1, len(items) + 1))
    assert items[0]["topic"] == "Opened" and items[0]["previous_hash"] is None
    previous = GENESIS_HASH
    for item in items:
        assert item["previous_hash"] in (None, previous)
        recorded = item["recorded_at"]
        assert compute_chain_hash(previous, item["topic"], item["position"],
                                  _canonical(recorded), item["data"]) == item["hash"]
        previous = item["hash"]
    missing = portal.client.get(f"/v1/audit/accounts/{uuid.uuid4()}/events", headers=OPERATOR)
    assert missing.status_code == 404


def _canonical(recorded_at: str) -> str:
    from datetime import datetime

    from ledger_service.domain.times import format_time
    return format_time(datetime.fromisoformat(recorded_at))


def test_cursors_are_opaque_but_stable(portal: Portal) -> None:
    account_id = portal.account(usage_batches=2)
    cursor = portal.entries(account_id, limit=2).json()["next_cursor"]
    assert decode_cursor(cursor) > 0


# ------------------------------------------------------------------ CSV formula injection


def test_csv_neutralises_formulas_in_text_and_keeps_negative_amounts_numbers(
    portal: Portal,
) -> None:
    from datetime import UTC, datetime

    from contracts.usage import UsageRecorded
    from ledger_service.app import intake

    account_id = portal.account(usage_batches=0)
    hostile = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+cmd|' /C calc'!A0", "-2+3",
               "@SUM(A1:A9)", "\tTAB", "\rCR", "plain reference", "-7"]
    intake.apply_usage(portal.ledger, [
        UsageRecorded(event_id=f"csv-{uuid.uuid4().hex[:8]}", account_id=account_id,
                      product="sms", quantity=1, occurred_at=datetime.now(UTC),
                      status="submitted", reference=reference)
        for reference in hostile])
    portal.workload.adjust(len(portal.workload.accounts) - 1, "debit", "1.25",
                           memo="=1+1 is what the auditor typed")
    portal.project()
    response = portal.client.get(f"/v1/accounts/{account_id}/entries",
                                 headers={**OPERATOR, "Accept": "text/csv"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    references = {r["reference"] for r in rows if r["kind"] == "usage"}
    assert references == {
        "'=HYPERLINK(\"http://evil.example\",\"x\")", "'+cmd|' /C calc'!A0", "'-2+3",
        "'@SUM(A1:A9)", "'\tTAB", "'\rCR", "plain reference", "-7"}
    adjustment = next(r for r in rows if r["kind"] == "adjustment")
    # The memo sits inside the description, which does not start with it: nothing to run.
    assert adjustment["description"] == "Adjustment (debit): =1+1 is what the auditor typed"
    assert adjustment["amount"] == "-1.25"  # a negative amount is a number, left alone
    assert all(r["amount"].startswith("-") for r in rows if r["kind"] == "usage")
    assert all(not r["balance_after"].startswith("'") for r in rows)
