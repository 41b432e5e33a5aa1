"""The ledger partitioned by account across processes (docs/scaling.md).

- contracts.partitioning agrees with nats-server's own {{partition(N,1)}} mapping;
- two ledger Applications (two processes' worth of caches and connections) applying the
  same accounts' usage at once, stale caches included: nothing doubled, nothing lost;
- two real ledger processes share the 16 partitions; usage over the old and the new subjects
  is applied exactly once; authorize through both subjects is answered, forwarded requests
  going to the account's partition; `kill -9` of one under load moves its partitions within
  seconds and, once the backlog drains, every balance is exact; a process that joins gets
  its share.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError
from nats.js.api import StreamConfig, SubjectTransform

from contracts.http.ledger import (
    AccountFee,
    Adjustment,
    ChargeFees,
    FeeOutcomes,
    GrantCredit,
    OpenAccount,
    RefundRequest,
    Tax,
)
from contracts.ledger import AuthorizeRequest
from contracts.partitioning import partition_of
from contracts.subjects import by_account
from contracts.usage import UsageRecorded
from ledger_service.app import accounts, intake
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import Ledger, UnitOfWork
from ledger_service.domain.errors import InsufficientFunds
from ledger_service.partitions import LeaseTable, PartitionOwner
from services.database import conninfo
from services.http import DEVELOPMENT_JWT_SECRET, mint_token
from tests.conftest import Infra
from tests.integration.ledger_fixtures import build_ledger
from tests.integration.service_process import ServiceProcess

pytestmark = pytest.mark.integration

OPERATOR = {"Authorization": "Bearer " + mint_token(DEVELOPMENT_JWT_SECRET, sub="ops-test",
                                                    scopes=["operator"])}
SMS_MICROS = 39_500  # the default catalogue's sms price
PARTITIONS = 16


# ------------------------------------------------------------------ the function, by NATS


async def test_partition_function_agrees_with_nats_server(infra: Infra) -> None:
    nc = await nats.connect(infra.nats_url)
    try:
        major, minor = (int(x) for x in nc._server_info["version"].split(".")[:2])
        if (major, minor) < (2, 10):
            pytest.skip("subject transforms need nats-server 2.10")
        js = nc.jetstream()
        name = f"PARTCHECK{uuid.uuid4().hex[:6].upper()}"
        root = name.lower()
        await js.add_stream(StreamConfig(
            name=name, subjects=[f"{root}.>"], subject_transform=SubjectTransform(
                src=f"{root}.*", dest=f"{root}.{{{{partition({PARTITIONS},1)}}}}.{{{{wildcard(1)}}}}")))
        try:
            ids = [str(uuid.uuid4()) for _ in range(64)]
            for account in ids:
                await js.publish(f"{root}.{account}", b"x")
            stored = {}
            for seq in range(1, len(ids) + 1):
                msg = await js.get_msg(name, seq)
                _, partition, account = msg.subject.split(".")
                stored[account] = int(partition)
            assert stored == {account: partition_of(account, PARTITIONS) for account in ids}
        finally:
            await js.delete_stream(name)
    finally:
        await nc.close()


# ------------------------------------------------------------------ forced overlap


def open_prepay(ledger: Ledger, credit: str = "100.00") -> uuid.UUID:
    account_id = uuid.uuid4()
    accounts.open_account(ledger, OpenAccount(account_id=account_id, type="prepay",
                                              currency="GBP", tax=Tax(country="GB")),
                          Idempotency("http:open", None, "h"))
    accounts.grant_credit(ledger, account_id,
                          GrantCredit(kind="purchased", amount=credit, reason="test"),
                          "tester", Idempotency("http:grant", None, "h"))
    return account_id


def usage_event(account_id: uuid.UUID, event_id: str) -> UsageRecorded:
    return UsageRecorded(event_id=event_id, account_id=account_id, product="sms", quantity=1,
                         occurred_at=datetime.now(UTC), status="submitted")


def stored_balance(ledger: Ledger, account_id: uuid.UUID) -> int:
    ledger.evict([account_id])
    return ledger.load(account_id).balance_micros


class Conflicts:
    """Counts the saves the event store refused as stale (optimistic concurrency)."""

    def __init__(self, ledger: Ledger) -> None:
        self.count = 0
        commit = ledger.commit

        def counting(work: Any) -> None:
            try:
                commit(work)
            except IntegrityError:
                self.count += 1
                raise

        ledger.commit = counting  # type: ignore[method-assign]


def apply_until_done(ledger: Ledger, batch: list[UsageRecorded]) -> list[str]:
    """As the consumer: a batch whose saves kept conflicting is redelivered (here: again)."""
    while True:
        try:
            return [v.outcome for v in intake.apply_usage(ledger, batch)]
        except IntegrityError:
            continue


def test_forced_overlap_of_two_owners_doubles_and_loses_nothing(infra: Infra) -> None:
    a, b = build_ledger(infra), build_ledger(infra)  # two processes' caches and connections
    conflicts_a, conflicts_b = Conflicts(a), Conflicts(b)
    try:
        ids = [open_prepay(a) for _ in range(4)]
        start = {account: stored_balance(a, account) for account in ids}
        for ledger in (a, b):  # both caches hold every account, as after a handover
            for account in ids:
                ledger.load(account)

        # 1. Stale cache: A applies, then B (whose cached account is now behind) applies other
        # events of the same account. B's save must conflict, reload and apply on top.
        first = ids[0]
        assert apply_until_done(a, [usage_event(first, "stale-a")]) == ["applied"]
        assert apply_until_done(b, [usage_event(first, "stale-b")]) == ["applied"]
        assert conflicts_b.count >= 1
        assert stored_balance(a, first) == start[first] - 2 * SMS_MICROS

        # 2. Both apply the same events of the same accounts at the same moment (a message
        # redelivered to the new owner while the old one still applies it), plus events of
        # their own, in many small batches.
        shared = [usage_event(ids[i % 4], f"shared-{i}") for i in range(200)]
        own = {"a": [usage_event(ids[i % 4], f"own-a-{i}") for i in range(100)],
               "b": [usage_event(ids[i % 4], f"own-b-{i}") for i in range(100)]}
        applied: dict[str, list[str]] = {"a": [], "b": []}
        barrier = threading.Barrier(2)

        def run(name: str, ledger: Ledger) -> None:
            barrier.wait()
            events = shared + own[name]
            for i in range(0, len(events), 10):
                applied[name] += apply_until_done(ledger, events[i:i + 10])

        threads = [threading.Thread(target=run, args=(n, ledger))
                   for n, ledger in (("a", a), ("b", b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)

        # Each shared event applied by exactly one of them, each own event by its owner.
        assert applied["a"].count("applied") + applied["b"].count("applied") == 400
        assert {*applied["a"], *applied["b"]} <= {"applied", "duplicate"}
        assert conflicts_a.count + conflicts_b.count >= 2  # the overlap did happen
        for i, account in enumerate(ids):
            events = 50 + 25 + 25 + (2 if i == 0 else 0)  # shared, own a, own b, stale
            assert stored_balance(b, account) == start[account] - events * SMS_MICROS
        assert a.seen_keys("usage", [e.event_id for e in shared]) == {
            e.event_id for e in shared}
    finally:
        a.app.close()
        b.app.close()


def test_a_refusal_is_never_decided_on_a_cache_another_process_left_behind(
    infra: Infra,
) -> None:
    """A refusal writes no event, so no version conflict reveals a stale cached account: B
    credits an account A holds in cache with nothing left; A's authorize must see the credit
    (not store `insufficient_funds` as the request's answer for good)."""
    a, b = build_ledger(infra), build_ledger(infra)
    try:
        account_id = open_prepay(a, credit="0.01")
        a.load(account_id)  # cached by A with 0.01
        accounts.grant_credit(b, account_id,
                              GrantCredit(kind="purchased", amount="10.00", reason="top-up"),
                              "tester", Idempotency("http:grant", "top-up-b", "h2"))
        request = AuthorizeRequest(request_id=f"req-{uuid.uuid4()}", account_id=account_id,
                                   product="sms", quantity=10)
        [reply] = intake.authorize(a, [request])
        assert reply.approved, reply
        # And a request that truly cannot be covered is still refused.
        [refused] = intake.authorize(a, [AuthorizeRequest(
            request_id=f"req-{uuid.uuid4()}", account_id=account_id, product="sms",
            quantity=100_000_000)])
        assert not refused.approved and refused.reason == "insufficient_funds"

        # A fee (renewals' batch route) is decided on the stored account too.
        fee_account = open_prepay(a, credit="0.01")
        a.load(fee_account)
        accounts.grant_credit(b, fee_account,
                              GrantCredit(kind="purchased", amount="50.00", reason="top-up"),
                              "tester", Idempotency("http:grant", "top-up-fee", "h3"))
        outcomes = msgspec.json.decode(accounts.charge_fees(a, ChargeFees(charges=[AccountFee(
            account_id=fee_account, charge_key=f"recurring:{uuid.uuid4()}:2026-12",
            product="vmn", quantity=1, period="2026-12")])), type=FeeOutcomes)
        assert [o.outcome for o in outcomes.results] == ["charged"], outcomes

        # An operator's command over HTTP too: a debit adjustment A would refuse on its cache.
        debited = open_prepay(a, credit="0.01")
        a.load(debited)
        accounts.grant_credit(b, debited,
                              GrantCredit(kind="purchased", amount="50.00", reason="top-up"),
                              "tester", Idempotency("http:grant", "top-up-adj", "h4"))
        outcome = accounts.adjust(a, debited, Adjustment(
            direction="debit", amount="5.00", memo="setup work invoiced by hand"), "tester",
            Idempotency("http:adjust", "adj-1", "h5"))
        assert not outcome.replayed

        # A refund of a debit B recorded after A cached the account.
        refunded = open_prepay(a, credit="10.00")
        a.load(refunded)
        assert apply_until_done(b, [usage_event(refunded, f"u-{uuid.uuid4()}")]) == ["applied"]
        [(entry_id,)] = b.query("SELECT entry_id FROM {schema}.entry_index WHERE account_id = %s"
                                " AND kind = 'usage'", (refunded,))
        accounts.refund(a, refunded, RefundRequest(entry_id=str(entry_id), reason="bad route"),
                        "tester", Idempotency("http:refund", "refund-1", "h6"))
        assert stored_balance(a, refunded) == 10_000_000

        # Any command that refuses on what it loaded: decided again when that was stale.
        gated = open_prepay(a, credit="0.01")
        a.load(gated)
        accounts.grant_credit(b, gated,
                              GrantCredit(kind="purchased", amount="20.00", reason="top-up"),
                              "tester", Idempotency("http:grant", "top-up-gate", "h7"))
        seen: list[int] = []

        def needs_funds(work: UnitOfWork) -> int:
            account = work.touch(a.load(gated))
            seen.append(account.balance_micros)
            if account.balance_micros < 10_000_000:
                raise InsufficientFunds("not on this balance")
            return account.balance_micros

        assert a.run(needs_funds) == 20_010_000
        assert seen == [10_000, 20_010_000]
    finally:
        a.app.close()
        b.app.close()


# ------------------------------------------------------------------ two real processes


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger-partition-logs")


def start_ledger(infra: Infra, log_dir: Path) -> ServiceProcess:
    return ServiceProcess("ledger_service", infra.service_env(
        LEDGER_PARTITIONS=str(PARTITIONS))).start(log_dir)


@pytest.fixture
def two_ledgers(infra: Infra, log_dir: Path) -> Iterator[list[ServiceProcess]]:
    processes: list[ServiceProcess] = []
    try:
        for _ in range(2):
            processes.append(start_ledger(infra, log_dir))
            processes[-1].wait_ready()
        eventually(lambda: owned_counts(infra) == [8, 8], 30)
    except BaseException:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.process.kill()
        raise
    yield processes
    for process in processes:
        if process.process is not None and process.process.poll() is None:
            assert process.stop() == 0, process.logs()


def leases(infra: Infra) -> dict[int, str | None]:
    with psycopg.connect(conninfo(infra.database_url), autocommit=True) as conn:
        rows = conn.execute("SELECT partition, owner FROM ledger.partition_leases"
                            " WHERE expires_at > now()").fetchall()
    return {int(p): owner for p, owner in rows}


def owned_counts(infra: Infra) -> list[int]:
    held = leases(infra)
    counts: dict[str, int] = {}
    for owner in held.values():
        if owner is not None:
            counts[owner] = counts.get(owner, 0) + 1
    return sorted(counts.values()) if len(held) == PARTITIONS else []


def eventually(check: Any, timeout_s: float = 60) -> float:
    started = time.monotonic()
    deadline = started + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check() is not False:
                return time.monotonic() - started
        except AssertionError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout_s}s: {last}")


def open_account(url: str, credit: str = "100.00") -> str:
    account_id = str(uuid.uuid4())
    body = {"account_id": account_id, "type": "prepay", "currency": "GBP",
            "tax": {"country": "GB"}}
    response = httpx.post(f"{url}/v1/accounts", json=body, headers=OPERATOR, timeout=30)
    assert response.status_code == 201, response.text
    grant = httpx.post(f"{url}/v1/accounts/{account_id}/credits", headers=OPERATOR, timeout=30,
                       json={"kind": "purchased", "amount": credit, "reason": "test"})
    assert grant.status_code == 201, grant.text
    return account_id


def balance_micros(url: str, account_id: str) -> int:
    response = httpx.get(f"{url}/v1/accounts/{account_id}/balance", headers=OPERATOR,
                         timeout=30)
    assert response.status_code == 200, response.text
    amount = response.json()["balance"]
    whole, _, fraction = amount.partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 1_000_000 + int((fraction + "000000")[:6]))


def usage_payload(account_id: str, event_id: str) -> bytes:
    return json.dumps({"event_id": event_id, "account_id": account_id, "product": "sms",
                       "quantity": 1, "occurred_at": datetime.now(UTC).isoformat(),
                       "status": "submitted"}).encode()


async def publish(nats_url: str, events: list[tuple[str, str]], *, legacy_every: int = 2,
                  pause_every: int = 0, pause_s: float = 0.0) -> None:
    """(account, event_id) pairs: every `legacy_every`-th on usage.v1.recorded, the others on
    usage.v1.recorded.<account_id>; each event twice (the second a publisher's retry,
    dropped by JetStream's duplicate window or by the ledger's event id)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for i, (account, event_id) in enumerate(events):
            subject = ("usage.v1.recorded" if i % legacy_every == 0
                       else by_account("usage.v1.recorded", account))
            payload = usage_payload(account, event_id)
            for _ in range(2):
                await js.publish_async(subject, payload, headers={"Nats-Msg-Id": event_id})
            if pause_every and i % pause_every == pause_every - 1:
                await js.publish_async_completed()
                await asyncio.sleep(pause_s)
        await js.publish_async_completed()
    finally:
        await nc.close()


def assert_exact(url: str, start: dict[str, int], expected_events: dict[str, int]) -> None:
    for account, events in expected_events.items():
        assert balance_micros(url, account) == start[account] - events * SMS_MICROS, account


def test_two_processes_apply_usage_over_both_subjects_exactly_once(
    infra: Infra, two_ledgers: list[ServiceProcess]
) -> None:
    first, second = two_ledgers
    ids = [open_account((first, second)[i % 2].url) for i in range(24)]
    start = {account: balance_micros(first.url, account) for account in ids}
    events = [(ids[i % len(ids)], f"two-{ids[i % len(ids)]}-{i}") for i in range(960)]
    asyncio.run(publish(infra.nats_url, events))
    expected = {account: 40 for account in ids}
    eventually(lambda: assert_exact(second.url, start, expected), 90)
    time.sleep(2)  # nothing more arrives late
    assert_exact(first.url, start, expected)


def test_an_accounts_http_commands_are_applied_by_its_owner_whichever_process_they_reach(
    infra: Infra, two_ledgers: list[ServiceProcess],
) -> None:
    first, second = two_ledgers
    accounts_ = [open_account(first.url, credit="1.00") for _ in range(16)]
    owners = leases(infra)
    members = {owner for owner in owners.values() if owner}
    assert len(members) == 2
    # Which member is which process: the pid is the member id's second field.
    member_of = {int(member.split(":")[1]): member for member in members}
    assert first.process is not None and second.process is not None
    first_member, second_member = member_of[first.process.pid], member_of[second.process.pid]

    def grant(url: str, account: str, key: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/accounts/{account}/credits",
                          headers={**OPERATOR, "Idempotency-Key": key}, timeout=30,
                          json={"kind": "bonus", "amount": "2.00", "reason": "routing test"})

    routed = 0
    for account in accounts_:
        owner = owners[partition_of(account, PARTITIONS)]
        for process in (first, second):
            member = first_member if process is first else second_member
            key = f"grant-{account}-{member}"
            answers = [grant(process.url, account, key) for _ in range(2)]
            assert [a.status_code for a in answers] == [201, 201], answers[0].text
            assert answers[0].json() == answers[1].json()  # the replay answers the first
            applied_by = answers[0].headers.get("x-ledger-applied-by")
            if owner == member:
                assert applied_by is None  # applied where it arrived
            else:
                assert applied_by == owner  # forwarded to the owner and applied there
                routed += 1
            assert answers[0].headers.get("x-request-id")
    assert routed == 16
    # Concurrent commands for the same accounts through both processes: each applied once.
    with httpx.Client(timeout=30) as client, \
            ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(lambda u=process.url, a=account, n=n: client.post(
                    f"{u}/v1/accounts/{a}/credits", headers=OPERATOR,
                    json={"kind": "bonus", "amount": "0.50", "reason": f"burst {n}"}))
                for n in range(3) for account in accounts_ for process in (first, second)]
        assert {job.result().status_code for job in jobs} == {201}
    for account in accounts_:
        assert balance_micros(second.url, account) == 1_000_000 + 2 * 2_000_000 + 6 * 500_000


def test_authorize_through_both_subjects_is_answered_by_the_owner(
    infra: Infra, two_ledgers: list[ServiceProcess]
) -> None:
    first, _ = two_ledgers
    ids = [open_account(first.url) for _ in range(16)]

    async def scenario() -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
        nc = await nats.connect(infra.nats_url)
        forwarded: list[str] = []  # what the forwarder sent on: subject, account

        async def seen(msg: Any) -> None:
            forwarded.append(f"{msg.subject} {json.loads(msg.data)['account_id']}")

        watch = await nc.subscribe("ledger.v1.authorize.part.>", cb=seen)
        replies = []
        try:
            for i, account in enumerate(ids * 4):
                subject = ("ledger.v1.authorize" if i % 2 == 0
                           else by_account("ledger.v1.authorize", account))
                request = {"request_id": f"part-auth-{i}-{account}", "account_id": account,
                           "product": "sms", "quantity": 1}
                reply = await nc.request(subject, json.dumps(request).encode(), timeout=10)
                replies.append(json.loads(reply.data))
            # The same request again: the same reply, whichever process the queue picks.
            again = {"request_id": f"part-auth-0-{ids[0]}", "account_id": ids[0],
                     "product": "sms", "quantity": 1}
            repeat = json.loads((await nc.request(
                by_account("ledger.v1.authorize", ids[0]), json.dumps(again).encode(),
                timeout=10)).data)
            await nc.flush()
            await watch.unsubscribe()
            return replies, forwarded, {"first": json.dumps(replies[0]),
                                        "repeat": json.dumps(repeat)}
        finally:
            await nc.close()

    replies, forwarded, repeat = asyncio.run(scenario())
    assert all(reply["approved"] for reply in replies), replies
    assert repeat["first"] == repeat["repeat"]
    owners = leases(infra)
    # Some requests reached a process that does not own the account: it forwarded them to
    # the account's own partition subject, where only that partition's owner listens.
    assert forwarded, "with two processes in one queue group, some requests are forwarded"
    for line in forwarded:
        subject, account = line.split()
        partition = int(subject.rsplit(".", 1)[1])
        assert partition == partition_of(account, PARTITIONS)
        assert owners.get(partition) is not None
    # Every request was answered once, with one stored reply (and hold) each.
    with psycopg.connect(conninfo(infra.database_url), autocommit=True) as conn:
        holds = conn.execute(
            "SELECT count(*) FROM ledger.idempotency_keys WHERE scope = 'authorize'"
            " AND key LIKE 'part-auth-%%'").fetchone()
    assert holds is not None and holds[0] == len(replies)


def test_kill_9_of_an_owner_under_load_moves_its_partitions_and_loses_nothing(
    infra: Infra, log_dir: Path, two_ledgers: list[ServiceProcess]
) -> None:
    survivor, victim = two_ledgers
    ids = [open_account(survivor.url) for _ in range(32)]
    start = {account: balance_micros(survivor.url, account) for account in ids}
    events = [(ids[i % len(ids)], f"kill-{ids[i % len(ids)]}-{i}") for i in range(3_200)]
    load = threading.Thread(target=lambda: asyncio.run(publish(
        infra.nats_url, events, pause_every=200, pause_s=0.25)))
    load.start()
    time.sleep(1.5)  # mid-load
    assert victim.process is not None
    victim.process.kill()  # SIGKILL: no release, no goodbye
    victim.process.wait()
    moved_s = eventually(lambda: owned_counts(infra) == [16], 30)
    load.join(120)
    assert not load.is_alive()
    expected = {account: 100 for account in ids}
    eventually(lambda: assert_exact(survivor.url, start, expected), 120)
    assert moved_s < 15, f"partitions moved after {moved_s:.1f} s"

    # A process that joins gets its share at once (the survivor hands over its surplus).
    joined = start_ledger(infra, log_dir)
    try:
        joined.wait_ready()
        eventually(lambda: owned_counts(infra) == [8, 8], 30)
        more = [(ids[i % len(ids)], f"join-{ids[i % len(ids)]}-{i}") for i in range(320)]
        asyncio.run(publish(infra.nats_url, more))
        expected = {account: 110 for account in ids}
        eventually(lambda: assert_exact(joined.url, start, expected), 90)
    finally:
        assert joined.stop() == 0, joined.logs()


def test_usage_decoded_for_routing_only_by_its_account() -> None:
    # The forwarder reads no more than the account: a message it cannot route is a dead
    # letter at once, one it can is the owner's to judge.
    from ledger_service.messaging import _routing_decoder
    account = uuid.uuid4()
    assert _routing_decoder.decode(json.dumps(
        {"account_id": str(account), "quantity": "not a number"}).encode()).account_id == account
    with pytest.raises(msgspec.DecodeError):
        _routing_decoder.decode(b'{"event_id": "x"}')


# ------------------------------------------------------------------ leases, in-process


class Recorder:
    """Hooks of one PartitionOwner: when each partition started and stopped here."""

    def __init__(self, name: str, events: list[tuple[float, str, str, int]]) -> None:
        self.name, self.events = name, events

    async def acquire(self, partition: int) -> None:
        self.events.append((time.monotonic(), self.name, "start", partition))

    async def release(self, partition: int) -> None:
        self.events.append((time.monotonic(), self.name, "stop", partition))

    async def leader(self, leader: bool) -> None:
        self.events.append((time.monotonic(), self.name, "leader" if leader else "follower", -1))


def lease_owner(infra: Infra, name: str, events: list[tuple[float, str, str, int]],
                ) -> PartitionOwner:
    hooks = Recorder(name, events)
    return PartitionOwner(LeaseTable(infra.database_url, "ledger", f"{name}-{uuid.uuid4()}", 8,
                                     lease_s=2.0),
                          on_acquire=hooks.acquire, on_release=hooks.release,
                          on_leader=hooks.leader, renew_interval_s=0.3, lease_s=2.0,
                          fence_margin_s=0.6)


async def wait_for(check: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached"
        await asyncio.sleep(0.05)


async def test_leases_share_out_hand_over_and_a_stalled_owner_fences_itself_first(
        infra: Infra) -> None:
    build_ledger(infra).app.close()  # the migrations
    with psycopg.connect(conninfo(infra.database_url), autocommit=True) as conn:
        # Other tests' processes are gone: start from free leases, sized 8 for this test.
        conn.execute("DELETE FROM ledger.partition_leases")
        conn.execute("DELETE FROM ledger.partition_members")
    events: list[tuple[float, str, str, int]] = []
    a, b = lease_owner(infra, "a", events), lease_owner(infra, "b", events)
    await a.start()
    assert sorted(a.owned) == list(range(8)) and a.owns_all() and a.leader
    await b.start()  # B joins: A hands over its surplus, B takes it
    await wait_for(lambda: len(a.owned) == 4 and len(b.owned) == 4)
    assert set(a.owned).isdisjoint(b.owned) and a.leader and not b.leader
    handed = set(b.owned)
    for partition in handed:  # A stopped each before B started it
        stopped = [t for t, who, what, p in events if (who, what, p) == ("a", "stop", partition)]
        started = [t for t, who, what, p in events if (who, what, p) == ("b", "start", partition)]
        assert stopped and started and stopped[-1] <= started[-1]

    # A stalls (its database calls hang): it must stop its partitions itself before its
    # leases can expire and B takes them.
    stalled = threading.Event()
    real_tick = a.table.tick

    def hanging_tick(*args: Any, **kwargs: Any) -> Any:
        stalled.wait(30)
        return real_tick(*args, **kwargs)

    a.table.tick = hanging_tick  # type: ignore[method-assign]
    a_had = set(a.owned)
    await wait_for(lambda: len(b.owned) == 8, 30)
    for partition in a_had:
        fenced = [t for t, who, what, p in events if (who, what, p) == ("a", "stop", partition)]
        taken = [t for t, who, what, p in events if (who, what, p) == ("b", "start", partition)]
        assert fenced and taken and fenced[-1] < taken[-1], partition
    assert not a.owned and not a.owns(next(iter(a_had))) and b.leader
    stalled.set()
    a.table.tick = real_tick  # type: ignore[method-assign]
    await b.stop()
    await a.stop()
