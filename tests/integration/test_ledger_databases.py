"""The ledger's partitions across two PostgreSQL databases (LEDGER_DATABASES,
docs/scaling.md "Partitions across databases"), with one real ledger process per database:

- `python -m ledger_service migrate` migrates both databases;
- each process takes leases only on its group's partitions, in its own database;
- accounts opened through either process (ids chosen by the client or by the ledger) are
  stored in the database of their partition, and nowhere else;
- usage on the public subjects, authorizations and payments for accounts of both groups are
  applied exactly once, each account's events only in its own database;
- reads of an account through the process of the other group answer from the right one;
- `ledgerctl verify` over both databases is clean, and names the group of a tampered event.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from contracts.partitioning import partition_of
from contracts.subjects import by_account
from ledger_service.cli import app
from services.database import conninfo, parse_database_url
from tests.conftest import Infra
from tests.integration.service_process import ServiceProcess
from tests.integration.test_ledger_partitions import (
    OPERATOR,
    SMS_MICROS,
    balance_micros,
    eventually,
    publish,
)

pytestmark = pytest.mark.integration

PARTITIONS = 16
GROUP_OF = {p: 0 if p < 8 else 1 for p in range(PARTITIONS)}
cli = CliRunner()


def _database_url(base: str, name: str) -> str:
    parts = parse_database_url(base)
    if parts.host.startswith("/"):
        return f"postgresql://{parts.user}@/{name}?host={parts.host}&port={parts.port}"
    auth = parts.user + (f":{parts.password}" if parts.password else "")
    return f"postgresql://{auth}@{parts.host}:{parts.port}/{name}"


@pytest.fixture(scope="module")
def databases(infra: Infra) -> Iterator[list[str]]:
    """Two empty databases beside the session's (named after it)."""
    base = parse_database_url(infra.database_url).dbname
    names = [f"{base}_g0", f"{base}_g1"]
    admin = conninfo(infra.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield [_database_url(infra.database_url, name) for name in names]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def database_map(databases: list[str]) -> str:
    return f"0-7={databases[0]};8-15={databases[1]}"


@pytest.fixture(scope="module")
def ledgers(infra: Infra, databases: list[str], database_map: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    """`migrate` once (both databases), then one ledger process per group: the first finds
    its group by its DATABASE_URL, the second by LEDGER_DATABASE_GROUP."""
    log_dir = tmp_path_factory.mktemp("ledger-databases-logs")
    # Small pools: two processes (and their followers) on a PostgreSQL others share.
    env = infra.service_env(LEDGER_PARTITIONS=str(PARTITIONS), LEDGER_DATABASES=database_map,
                            DB_POOL_SIZE_MAX="3")
    subprocess.run([sys.executable, "-m", "ledger_service", "migrate"],
                   env={**env, "DATABASE_URL": databases[0]}, check=True, timeout=120)
    processes = [
        ServiceProcess("ledger_service", {**env, "DATABASE_URL": databases[0]}),
        ServiceProcess("ledger_service", {**env, "DATABASE_URL": infra.database_url,
                                          "LEDGER_DATABASE_GROUP": "g1"}),
    ]
    for process in processes:
        process.start(log_dir)
    try:
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                assert process.stop() == 0, process.logs()


def query(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        return conn.execute(statement, args).fetchall()


def events_in(url: str, account: str) -> int:
    return int(query(url, "SELECT count(*) FROM ledger.ledger_events WHERE originator_id = %s",
                     uuid.UUID(account))[0][0])


def group_of(account: str) -> int:
    return GROUP_OF[partition_of(account, PARTITIONS)]


def open_through(url: str, account_id: str | None = None, key: str | None = None) -> str:
    body: dict[str, Any] = {"type": "prepay", "currency": "GBP", "tax": {"country": "GB"}}
    if account_id is not None:
        body["account_id"] = account_id
    headers = {**OPERATOR, **({"Idempotency-Key": key} if key else {})}
    response = httpx.post(f"{url}/v1/accounts", json=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["account_id"])


def test_migrate_reaches_both_databases_and_each_process_leases_only_its_group(
    databases: list[str], ledgers: list[ServiceProcess],
) -> None:
    for url in databases:
        applied = {v for (v,) in query(url, "SELECT version FROM ledger.schema_migrations")}
        assert "0006_partitions.sql" in applied
        assert query(url, "SELECT to_regclass('ledger.ledger_events')")[0][0] is not None

    def leased() -> list[set[int]]:
        held = [{int(p) for (p,) in query(url, "SELECT partition FROM ledger.partition_leases"
                                               " WHERE owner IS NOT NULL AND expires_at > now()")}
                for url in databases]
        assert held == [set(range(8)), set(range(8, 16))], held
        return held

    eventually(leased, 30)
    # One member per database, each the leader (followers) of its own group.
    for url in databases:
        assert len(query(url, "SELECT member FROM ledger.partition_members"
                              " WHERE expires_at > now()")) == 1


def test_accounts_land_in_their_partitions_database_whichever_process_opens_them(
    databases: list[str], ledgers: list[ServiceProcess],
) -> None:
    opened, chosen_here = [], []
    for i in range(18):
        via, kind = i % 2, (i // 2) % 3
        if kind == 0:  # the ledger chooses the id: one of the receiving process's group
            opened.append(open_through(ledgers[via].url))
            chosen_here.append((opened[-1], via))
        elif kind == 1:  # and with a key: the key's group, wherever it arrives
            opened.append(open_through(ledgers[via].url, key=f"open-key-{uuid.uuid4()}"))
        else:  # the client chooses the id
            opened.append(open_through(ledgers[via].url, account_id=str(uuid.uuid4())))
    assert all(group_of(account) == via for account, via in chosen_here), chosen_here
    assert {group_of(a) for a in opened} == {0, 1}
    for account in opened:
        home = group_of(account)
        assert events_in(databases[home], account) >= 1, account
        assert events_in(databases[1 - home], account) == 0, account
    # A retried open with the same key, through the other process: the same account.
    key = f"retry-{uuid.uuid4()}"
    first = open_through(ledgers[0].url, key=key)
    again = httpx.post(f"{ledgers[1].url}/v1/accounts", headers={**OPERATOR, "Idempotency-Key": key},
                       json={"type": "prepay", "currency": "GBP", "tax": {"country": "GB"}},
                       timeout=30)
    assert again.status_code == 201 and again.json()["account_id"] == first
    assert again.headers.get("idempotent-replayed") == "true"


def funded_accounts(ledgers: list[ServiceProcess], count: int) -> list[str]:
    """`count` accounts, half in each group, each granted 100.00 through the process of the
    other group (the command goes to its owner)."""
    accounts: list[str] = []
    while len(accounts) < count:
        account = str(uuid.uuid4())
        if sum(group_of(a) == group_of(account) for a in accounts) >= count // 2:
            continue
        open_through(ledgers[group_of(account)].url, account_id=account)
        grant = httpx.post(f"{ledgers[1 - group_of(account)].url}/v1/accounts/{account}/credits",
                           headers=OPERATOR, timeout=30,
                           json={"kind": "purchased", "amount": "100.00", "reason": "test"})
        assert grant.status_code == 201, grant.text
        accounts.append(account)
    return accounts


def test_usage_authorize_payments_and_reads_for_both_groups_are_exact(
    infra: Infra, databases: list[str], ledgers: list[ServiceProcess],
) -> None:
    accounts = funded_accounts(ledgers, 12)
    start = 100_000_000
    events = [(accounts[i % len(accounts)], f"db-{accounts[i % len(accounts)]}-{i}")
              for i in range(240)]
    asyncio.run(publish(infra.nats_url, events))  # half on usage.v1.recorded, each twice

    def exact(via: int) -> None:
        for account in accounts:
            assert balance_micros(ledgers[via].url, account) == start - 20 * SMS_MICROS, account

    eventually(lambda: exact(0), 90)
    exact(1)  # the same answer through the other process
    for account in accounts:
        home = group_of(account)
        usage = query(databases[home], "SELECT count(*) FROM ledger.idempotency_keys"
                                       " WHERE key LIKE %s", f"db-{account}-%")[0][0]
        assert usage == 20, account
        assert events_in(databases[1 - home], account) == 0

    async def authorize_and_pay() -> list[dict[str, Any]]:
        nc = await nats.connect(infra.nats_url)
        try:
            replies = []
            for i, account in enumerate(accounts):
                subject = "ledger.v1.authorize" if i % 2 else by_account("ledger.v1.authorize",
                                                                          account)
                request = {"request_id": f"db-auth-{account}", "account_id": account,
                           "product": "sms", "quantity": 1}
                reply = await nc.request(subject, json.dumps(request).encode(), timeout=10)
                replies.append(json.loads(reply.data))
            js = nc.jetstream()
            for account in accounts:
                payment = {"payment_id": f"db-pay-{account}", "provider": "stripe",
                           "provider_reference": "cs_test", "account_id": account,
                           "purpose": "topup", "amount": "10.00", "vat_amount": "2.00",
                           "currency": "GBP", "received_at": datetime.now(UTC).isoformat()}
                for attempt in range(2):
                    await js.publish("payments.v1.received", json.dumps(payment).encode(),
                                     headers={"Nats-Msg-Id": f"db-pay-{account}-{attempt}"})
            return replies
        finally:
            await nc.close()

    replies = asyncio.run(authorize_and_pay())
    assert all(reply["approved"] for reply in replies), replies
    for account in accounts:
        holds = query(databases[group_of(account)], "SELECT count(*) FROM ledger.idempotency_keys"
                      " WHERE scope = 'authorize' AND key = %s", f"db-auth-{account}")[0][0]
        assert holds == 1, account

    def paid() -> None:
        for account in accounts:
            for via in ledgers:
                assert balance_micros(via.url, account) == \
                    start - 20 * SMS_MICROS + 10_000_000, account

    eventually(paid, 60)
    # Every read of an account answers the same through either process.
    for account in accounts[:4]:
        for path in ("", "/entries", "/usage"):
            answers = [httpx.get(f"{via.url}/v1/accounts/{account}{path}", headers=OPERATOR,
                                 timeout=30) for via in ledgers]
            assert [a.status_code for a in answers] == [200, 200], answers[1].text
            assert answers[0].json() == answers[1].json()


def ledgerctl(database_map: str, databases: list[str], tmp_path: Path, *args: str) -> Any:
    return cli.invoke(app, list(args), env={
        "DATABASE_URL": databases[0], "LEDGER_DATABASES": database_map,
        "LEDGER_PARTITIONS": str(PARTITIONS), "ANCHOR_DIR": str(tmp_path / "anchors"),
        "COLUMNS": "200"})


def test_ledgerctl_verifies_every_database_and_names_the_tampered_group(
    databases: list[str], database_map: str, ledgers: list[ServiceProcess], tmp_path: Path,
) -> None:
    accounts = funded_accounts(ledgers, 4)
    caught_up = ledgerctl(database_map, databases, tmp_path, "catch-up")
    assert caught_up.exit_code == 0, caught_up.output
    status = ledgerctl(database_map, databases, tmp_path, "status", "--json")
    assert status.exit_code == 0, status.output
    assert [g["group"] for g in json.loads(status.stdout)["groups"]] == ["g0", "g1"]
    clean = ledgerctl(database_map, databases, tmp_path, "verify", "--json")
    assert clean.exit_code == 0, clean.output
    report = json.loads(clean.stdout)
    assert report["ok"] and [g["group"] for g in report["groups"]] == ["g0", "g1"]
    assert all(g["accounts"] > 0 for g in report["groups"])
    anchored = ledgerctl(database_map, databases, tmp_path, "anchor")
    assert anchored.exit_code == 0 and "group g1" in anchored.stdout, anchored.output
    balance = ledgerctl(database_map, databases, tmp_path, "balance", accounts[-1], "--json")
    assert balance.exit_code == 0 and json.loads(balance.stdout)["balance"] == "100.00"

    victim = next(a for a in accounts if group_of(a) == 1)
    options = "-c search_path=ledger -c session_replication_role=replica"
    with psycopg.connect(conninfo(databases[1], options=options), autocommit=True) as conn:
        (state,) = conn.execute("SELECT state FROM ledger_events WHERE originator_id = %s"
                                " ORDER BY originator_version DESC LIMIT 1",
                                (uuid.UUID(victim),)).fetchone() or (None,)
        payload = msgspec.json.decode(bytes(state))
        payload["chain_hash"] = "0" * 64
        conn.execute("UPDATE ledger_events SET state = %s WHERE originator_id = %s"
                     " AND originator_version = (SELECT max(originator_version) FROM"
                     " ledger_events WHERE originator_id = %s)",
                     (msgspec.json.encode(payload), uuid.UUID(victim), uuid.UUID(victim)))
    tampered = ledgerctl(database_map, databases, tmp_path, "verify")
    assert tampered.exit_code == 1, tampered.output
    last = tampered.stdout.strip().splitlines()[-1]
    assert "DIVERGENT in group g1" in last and "g0" not in last, tampered.stdout
    as_json = json.loads(ledgerctl(database_map, databases, tmp_path, "verify", "--json").stdout)
    assert [g["ok"] for g in as_json["groups"]] == [True, False]
    # The account's chain, and the anchor made above (of the whole log: no account).
    assert {d["account_id"] for d in as_json["groups"][1]["divergences"]} == {victim, None}


def test_a_charges_batch_across_both_databases_charges_each_fee_in_its_own(
    ledgers: list[ServiceProcess], databases: list[str],
) -> None:
    accounts = funded_accounts(ledgers, 4)
    run = uuid.uuid4()
    fees = [{"account_id": account, "charge_key": f"recurring:{run}:{i}", "product": "vmn",
             "quantity": 1, "period": "2026-12"} for i, account in enumerate(accounts * 2)]
    fees.append({**fees[0], "account_id": str(uuid.uuid4()), "charge_key": f"nobody:{run}"})
    before = {a: balance_micros(ledgers[0].url, a) for a in accounts}
    answers = [httpx.post(f"{via.url}/v1/charges", json={"charges": fees}, headers=OPERATOR,
                          timeout=30) for via in ledgers]  # the second: every key again
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    for answer in answers:
        results = answer.json()["results"]
        assert [r["charge_key"] for r in results] == [f["charge_key"] for f in fees]
        assert [r["outcome"] for r in results] == ["charged"] * 8 + ["rejected"]
    assert answers[0].json() == answers[1].json()  # the first charges, answered again
    for account in accounts:
        charged = before[account] - balance_micros(ledgers[1].url, account)
        price = charged // 2
        assert charged == 2 * price and price > 0, account
        keys = query(databases[group_of(account)], "SELECT count(*) FROM ledger.ledger_events"
                     " WHERE originator_id = %s", uuid.UUID(account))[0][0]
        assert keys >= 2 and events_in(databases[1 - group_of(account)], account) == 0


def test_verify_finds_an_account_stored_in_another_groups_database(
    databases: list[str], database_map: str, ledgers: list[ServiceProcess], tmp_path: Path,
) -> None:
    stray = funded_accounts(ledgers, 2)
    stray_account = next(a for a in stray if group_of(a) == 1)
    (row,) = query(databases[1], "SELECT originator_version, topic, state FROM"
                   " ledger.ledger_events WHERE originator_id = %s AND originator_version = 1",
                   uuid.UUID(stray_account))
    with psycopg.connect(conninfo(databases[0], options="-c search_path=ledger"),
                         autocommit=True) as conn:  # an insert: the log allows it
        conn.execute("INSERT INTO ledger_events (originator_id, originator_version, topic,"
                     " state) VALUES (%s, %s, %s, %s)", (uuid.UUID(stray_account), *row))
    report = json.loads(ledgerctl(database_map, databases, tmp_path, "verify", "--json",
                                  "--account", stray_account).stdout)
    [group] = report["groups"]  # --account: the account's own database only, intact
    assert group["group"] == "g1" and group["ok"], group
    whole = json.loads(ledgerctl(database_map, databases, tmp_path, "verify", "--json").stdout)
    misplaced = [d for d in whole["groups"][0]["divergences"] if d["check"] == "database"]
    assert [d["account_id"] for d in misplaced] == [stray_account]
    assert "g1" in misplaced[0]["expected"] and not whole["ok"]
