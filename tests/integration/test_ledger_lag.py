"""Lag is visible: the ledger's /metrics shows each follower's lag (read from the database
positions, since the followers run in a process of their own), the JetStream consumers'
backlog and the dead letters; GET /v1/health/lag answers 503 while a follower is held back
with events waiting longer than LEDGER_LAG_ALERT_S, and 200 again once it catches up;
`ledgerctl status` prints the lags and `ledgerctl verify` exits 3 while projections are
behind."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from ledger_service.cli import app as ledgerctl
from ledger_service.lag import read_lags
from ledger_service.projections.runner import LOCK_NAME
from services.database import conninfo
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_projections_workload import Clock, build, scratch_database

pytestmark = pytest.mark.integration
OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="lag-test",
                                                    scopes=["operator"])}
ALERT_S = 1.5
PROJECTIONS = ("balances", "holds", "statement", "usage")


@pytest.fixture(scope="module")
def ledger(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess("ledger_service", infra.service_env(
        LEDGER_LAG_ALERT_S=str(ALERT_S))).start(tmp_path_factory.mktemp("ledger-lag"))
    service.wait_ready()
    try:
        yield service
    finally:
        assert service.stop() == 0, service.logs()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.MULTILINE)
    assert found, f"{name}{{{wanted}}} not in /metrics:\n" + "\n".join(
        line for line in text.splitlines() if name in line)
    return float(found.group(1))


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout_s} s")


def credit(ledger: ServiceProcess, account: str, amount: str) -> None:
    response = httpx.post(f"{ledger.url}/v1/accounts/{account}/credits", headers=OPERATOR,
                          json={"kind": "purchased", "amount": amount, "reason": "lag test"})
    assert response.status_code == 201, response.text


def lag_status(ledger: ServiceProcess) -> int:
    return httpx.get(f"{ledger.url}/v1/health/lag", timeout=10).status_code


def ledgerctl_run(infra: Infra, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(ledgerctl, list(args), env={"DATABASE_URL": infra.database_url,
                                                            "COLUMNS": "200"})
    return result.exit_code, result.output


def test_a_held_back_projection_shows_in_metrics_health_status_and_verify(
    ledger: ServiceProcess, infra: Infra,
) -> None:
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    credit(ledger, account, "5.00")
    wait_for(lambda: lag_status(ledger) == 200 and httpx.get(
        f"{ledger.url}/v1/health/lag").json()["followers"][0]["behind_events"] == 0, "caught up")
    body = httpx.get(f"{ledger.url}/v1/health/lag").json()
    assert {f["name"] for f in body["followers"]} == {*PROJECTIONS, "ledger.v1.events"}
    assert body["alert_s"] == ALERT_S

    metrics = httpx.get(f"{ledger.url}/metrics").text
    for name in PROJECTIONS:
        assert metric(metrics, "ledger_follower_lag_events", kind="projection",
                      follower=name) == 0
    assert metric(metrics, "nats_consumer_pending_messages", stream="USAGE",
                  consumer="ledger-usage") == 0
    assert metric(metrics, "nats_consumer_ack_pending_messages", stream="PAYMENTS",
                  consumer="ledger-payments-received") == 0
    assert "# TYPE nats_dead_letters gauge" in metrics
    # How full each stream is, against the limit the broker gave it (bytes scaled per test).
    assert metric(metrics, "nats_stream_max_bytes", stream="LEDGER") > 0
    assert 0 < metric(metrics, "nats_stream_fill_ratio", stream="LEDGER") < 1
    assert metric(metrics, "nats_stream_bytes", stream="LEDGER") == pytest.approx(
        metric(metrics, "nats_stream_fill_ratio", stream="LEDGER")
        * metric(metrics, "nats_stream_max_bytes", stream="LEDGER"))
    assert metric(metrics, "ledger_log_head_position") > 0

    # Hold the projections' lock: every batch of the follower process waits behind it.
    holder = psycopg.connect(conninfo(infra.database_url, options="-c search_path=ledger"))
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK_NAME,))
        credit(ledger, account, "1.00")
        credit(ledger, account, "2.00")
        wait_for(lambda: lag_status(ledger) == 503, "503 while held back", timeout_s=15)
        problem = httpx.get(f"{ledger.url}/v1/health/lag")
        assert problem.headers["content-type"].startswith("application/problem+json")
        stuck = {f["name"]: f for f in problem.json()["followers"] if f["stuck"]}
        assert set(stuck) == set(PROJECTIONS)  # the publisher is not held back
        assert all(f["behind_events"] >= 2 and f["lag_s"] > ALERT_S for f in stuck.values())

        metrics = httpx.get(f"{ledger.url}/metrics").text
        assert metric(metrics, "ledger_follower_lag_events", kind="projection",
                      follower="balances") >= 2
        assert metric(metrics, "ledger_follower_lag_seconds", kind="projection",
                      follower="statement") > ALERT_S

        code, output = ledgerctl_run(infra, "status")
        assert code == 0, output
        row = r"balances\W+projection\W+\d+\W+([1-9]\d*)\W+(\d+\.\d) s"
        found = re.search(row, output)
        assert found and float(found.group(2)) > ALERT_S, output
        assert "ledger.v1.events" in output

        code, output = ledgerctl_run(infra, "verify", "--account", account, "--lag-max-s", "1")
        assert code == 3, output
        assert "WARNING" in output and "balances" in output
    finally:
        holder.rollback()
        holder.close()

    wait_for(lambda: lag_status(ledger) == 200, "200 once caught up")
    code, output = ledgerctl_run(infra, "verify", "--account", account, "--lag-max-s", "1")
    assert code == 0, output


def test_ledgerctl_status_and_the_lag_route_answer_the_same_followers(
    ledger: ServiceProcess, infra: Infra,
) -> None:
    """Both read ledger_service/lag.py (one query, one JSON shape): a copy of either in the
    CLI, as there was, would drift from the route unnoticed."""
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers=OPERATOR, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    credit(ledger, account, "3.00")
    wait_for(lambda: all(f["behind_events"] == 0 for f in httpx.get(
        f"{ledger.url}/v1/health/lag").json()["followers"]), "every follower at the head")
    route = httpx.get(f"{ledger.url}/v1/health/lag").json()["followers"]
    result = CliRunner().invoke(ledgerctl, ["status", "--json"], env={
        "DATABASE_URL": infra.database_url, "LEDGER_LAG_ALERT_S": str(ALERT_S)})
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)["followers"]
    assert status == route
    assert {f["kind"] for f in status} == {"projection", "publisher"}
    assert all(f["updated_at"] for f in status if f["kind"] == "projection")


def test_lag_is_read_when_a_waiting_event_holds_an_escaped_nul(infra: Infra) -> None:
    """PostgreSQL's JSON operators refuse a document holding \\u0000 anywhere; the lag query
    reads only the timestamp, so free text with one cannot break /metrics or the health
    route (it did: a fuzzed account name)."""
    with scratch_database(infra, "lagnul") as database_url:
        build(database_url, Clock()).app.close()  # the event store's tables and migrations
        state = (b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00"},'
                 b'"name":"a\\u0000b","originator_topic":"x"}')
        with psycopg.connect(conninfo(database_url, options="-c search_path=ledger"),
                             autocommit=True) as conn:
            conn.execute("INSERT INTO ledger_events (originator_id, originator_version, topic,"
                         " state) VALUES (%s, 1, 'not-an-event', %s)", (uuid.uuid4(), state))
            lags = read_lags(conn)
    assert {lag.name for lag in lags} == {*PROJECTIONS, "ledger.v1.events"}
    assert all(lag.behind_events == 1 and lag.lag_s > 86_400 for lag in lags)
