"""The ledger's use cases over real PostgreSQL: exactly once, atomic, idempotent."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from contracts.http.ledger import GrantCredit, OpenAccount, Tax
from contracts.ledger import AuthorizeRequest
from contracts.money import format_micros
from contracts.usage import UsageRecorded
from ledger_service.app import accounts, intake
from ledger_service.app.accounts import Idempotency
from ledger_service.app.ledger import ConflictingIdempotencyKey, Ledger
from tests.integration.ledger_fixtures import build_ledger

pytestmark = pytest.mark.integration


def open_prepay(ledger: Ledger, credit: str = "10.00", **kw: object) -> uuid.UUID:
    account_id = uuid.uuid4()
    body = OpenAccount(account_id=account_id, type="prepay", currency="GBP",
                       tax=Tax(country="GB"), **kw)  # type: ignore[arg-type]
    accounts.open_account(ledger, body, Idempotency("http:open", None, "h"))
    if credit != "0":
        accounts.grant_credit(ledger, account_id,
                              GrantCredit(kind="purchased", amount=credit, reason="test"),
                              "tester", Idempotency("http:grant", None, "h"))
    return account_id


def usage(account_id: uuid.UUID, event_id: str, quantity: int = 1, **kw: object) -> UsageRecorded:
    return UsageRecorded(event_id=event_id, account_id=account_id, product="sms",
                         quantity=quantity, occurred_at=datetime.now(UTC),
                         status="submitted", **kw)  # type: ignore[arg-type]


def balance(ledger: Ledger, account_id: uuid.UUID) -> str:
    ledger.evict([account_id])  # read what is stored, not the writer's cache
    return format_micros(ledger.load(account_id).balance_micros)


def test_usage_batch_debits_each_account_once_and_duplicates_change_nothing(ledger: Ledger) -> None:
    a, b = open_prepay(ledger), open_prepay(ledger)
    batch = [usage(a, "a-1"), usage(a, "a-2", 2), usage(b, "b-1"), usage(a, "a-1")]
    verdicts = intake.apply_usage(ledger, batch)
    assert [v.outcome for v in verdicts] == ["applied", "applied", "applied", "duplicate"]
    assert balance(ledger, a) == "9.8815"  # 10 - 3 x 0.0395
    assert balance(ledger, b) == "9.9605"
    again = intake.apply_usage(ledger, batch)
    assert {v.outcome for v in again} == {"duplicate"}
    assert balance(ledger, a) == "9.8815"


def test_unknown_account_and_unknown_product_are_dead_letters_and_the_rest_applies(
    ledger: Ledger,
) -> None:
    a = open_prepay(ledger)
    bad_product = msgspec.structs.replace(usage(a, "p-1"), product="carrier_pigeon")
    verdicts = intake.apply_usage(
        ledger, [usage(uuid.uuid4(), "x-1"), bad_product, usage(a, "ok-1")])
    assert [v.outcome for v in verdicts] == ["dead", "dead", "applied"]
    assert "not found" in (verdicts[0].detail or "")
    assert balance(ledger, a) == "9.9605"
    # dead letters record no key: once the cause is fixed, a retry applies
    assert ledger.seen_keys("usage", ["x-1", "p-1"]) == set()


def test_authorize_places_a_hold_refuses_past_the_floor_and_replays(ledger: Ledger) -> None:
    a = open_prepay(ledger, "0.10")
    ok = AuthorizeRequest(request_id="r-1", account_id=a, product="sms", quantity=2)
    too_much = AuthorizeRequest(request_id="r-2", account_id=a, product="sms", quantity=2)
    first, refused = intake.authorize(ledger, [ok, too_much])
    assert first.approved and first.amount == "0.079" and first.available_after == "0.021"
    assert not refused.approved and refused.reason == "insufficient_funds"
    assert intake.authorize(ledger, [ok, too_much]) == [first, refused]
    unknown = AuthorizeRequest(request_id="r-3", account_id=uuid.uuid4(), product="sms",
                               quantity=1)
    assert intake.authorize(ledger, [unknown])[0].reason == "account_not_found"


def test_usage_with_the_hold_captures_it(ledger: Ledger) -> None:
    a = open_prepay(ledger, "1.00")
    reply = intake.authorize(ledger, [AuthorizeRequest(request_id="cap-1", account_id=a,
                                                       product="sms", quantity=1)])[0]
    assert reply.approved
    intake.apply_usage(ledger, [usage(a, "cap-u1", hold_id=reply.hold_id)])
    ledger.evict([a])
    account = ledger.load(a)
    assert account.held_micros == 0
    assert account.balance_micros == 1_000_000 - 39_500


def test_http_idempotency_replays_and_refuses_another_body(ledger: Ledger) -> None:
    a = open_prepay(ledger, "0")
    body = GrantCredit(kind="bonus", amount="5.00", reason="welcome")
    first = accounts.grant_credit(ledger, a, body, "op", Idempotency("http:grant", "k1", "h1"))
    again = accounts.grant_credit(ledger, a, body, "op", Idempotency("http:grant", "k1", "h1"))
    assert again.replayed and again.response == first.response
    assert balance(ledger, a) == "5.00"
    with pytest.raises(ConflictingIdempotencyKey):
        accounts.grant_credit(ledger, a, body, "op", Idempotency("http:grant", "k1", "h2"))


def test_refund_of_a_usage_line_restores_and_never_exceeds(ledger: Ledger) -> None:
    from contracts.http.ledger import RefundRequest
    from ledger_service.domain.errors import RefundExceedsDebit
    from ledger_service.domain.postings import usage_entry_id

    a = open_prepay(ledger, "1.00")
    intake.apply_usage(ledger, [usage(a, "rf-1", 10)])
    entry_id = usage_entry_id(a, "rf-1")
    half = RefundRequest(entry_id=uuid.UUID(entry_id), amount="0.20", reason="carrier fault")
    accounts.refund(ledger, a, half, "op", Idempotency("http:refund", "rf-k1", "h"))
    assert balance(ledger, a) == "0.805"
    with pytest.raises(RefundExceedsDebit):
        accounts.refund(ledger, a, RefundRequest(entry_id=uuid.UUID(entry_id), amount="0.20",
                                                 reason="again"), "op",
                        Idempotency("http:refund", "rf-k2", "h"))
    rest = RefundRequest(entry_id=uuid.UUID(entry_id), reason="rest")
    accounts.refund(ledger, a, rest, "op", Idempotency("http:refund", "rf-k3", "h"))
    accounts.refund(ledger, a, rest, "op", Idempotency("http:refund", "rf-k4", "h"))  # no-op
    assert balance(ledger, a) == "1.00"


def test_two_ledgers_on_one_database_never_double_apply(infra) -> None:  # type: ignore[no-untyped-def]
    one, two = build_ledger(infra), build_ledger(infra)
    try:
        a = open_prepay(one)
        two.load(a)  # warm the second writer's cache, then let the first move ahead
        intake.apply_usage(one, [usage(a, "race-1")])
        verdicts = intake.apply_usage(two, [usage(a, "race-1"), usage(a, "race-2")])
        assert [v.outcome for v in verdicts] == ["duplicate", "applied"]
        assert balance(one, a) == "9.921"
    finally:
        one.app.close()
        two.app.close()


def test_the_sweep_expires_due_holds_and_grants_once(ledger: Ledger) -> None:
    from datetime import timedelta

    a = open_prepay(ledger, "0")
    soon = datetime.now(UTC) + timedelta(minutes=1)
    accounts.grant_credit(ledger, a, GrantCredit(kind="signup_promo", amount="2.00",
                                                 expires_at=soon, reason="welcome"),
                          "ops", Idempotency("http:grant", None, "h"))
    held = intake.authorize(ledger, [AuthorizeRequest(request_id=f"sw-{a}", account_id=a,
                                                      product="sms", quantity=1,
                                                      ttl_seconds=30)])[0]
    assert held.approved
    assert accounts.sweep_expiries(ledger) == 0  # nothing due yet
    ledger.clock = lambda: datetime.now(UTC) + timedelta(minutes=2)
    assert accounts.sweep_expiries(ledger) == 1
    ledger.evict([a])
    account = ledger.load(a)
    assert account.held_micros == 0 and account.balance_micros == 0
    version = account.version
    assert accounts.sweep_expiries(ledger) == 0  # the schedule row is gone: idempotent
    ledger.evict([a])
    assert ledger.load(a).version == version


async def ledger_stream(nats_client):  # type: ignore[no-untyped-def]
    """JetStream, with the LEDGER stream the publisher writes to."""
    from services.broker import stream_config

    js = nats_client.jetstream()
    with contextlib.suppress(Exception):
        await js.add_stream(stream_config("LEDGER"))
    return js


async def test_republishing_after_a_crash_duplicates_nothing(ledger: Ledger, nats_client) -> None:  # type: ignore[no-untyped-def]
    from ledger_service.publisher import EventPublisher

    js = await ledger_stream(nats_client)
    a = open_prepay(ledger, "5.00")
    intake.apply_usage(ledger, [usage(a, f"pub-{a}")])
    publisher = EventPublisher(ledger, nats_client)
    first = await publisher.publish_round(0)  # as if the process died before storing this
    second = await publisher.publish_round(0)
    assert first == second is not None
    sub = await js.subscribe("ledger.v1.events.entry_posted", ordered_consumer=True)
    mine = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1)
        except Exception:
            break
        if a.hex in msg.data.decode().replace("-", ""):
            mine.append(msg.data)
    assert len(mine) == 2  # the grant and the usage line, each once


def test_a_request_answered_by_another_process_gets_the_same_reply(infra) -> None:  # type: ignore[no-untyped-def]
    one, two = build_ledger(infra), build_ledger(infra)
    try:
        a = open_prepay(one, "0.05")
        request = AuthorizeRequest(request_id=f"x-{a}", account_id=a, product="sms", quantity=1)
        first = intake.authorize(one, [request])[0]
        assert first.approved
        # the second process has never seen it: its insert of the key fails, it looks it up
        assert intake.authorize(two, [request]) == [first]
        one.evict([a])
        assert one.load(a).held_micros == 39_500  # one hold, not two
    finally:
        one.app.close()
        two.app.close()


def test_of_two_publishers_one_leads_and_the_other_takes_over_when_it_stops(infra) -> None:  # type: ignore[no-untyped-def]
    from ledger_service.followers import publisher_connector
    from ledger_service.publisher import EventPublisher

    connect = publisher_connector(infra.database_url)
    ledger = build_ledger(infra)
    first = EventPublisher(ledger, None, connect)  # type: ignore[arg-type]
    second = EventPublisher(ledger, None, connect)  # type: ignore[arg-type]
    try:
        assert first._lead()
        assert not second._lead()  # the lock is held by another session
        assert first._lead()  # still held: no new session, no new lock
        first._store_position(first._position())  # written through the lock's session
        first._resign()
        assert second._lead()
        assert not first._lead()
    finally:
        first._resign()
        second._resign()
        ledger.app.close()


@pytest.mark.parametrize("rows", [1, 400], ids=["one-round-trip", "copy"])
def test_a_save_whose_key_exists_writes_nothing_and_leaves_the_store_usable(
        ledger: Ledger, rows: int) -> None:
    from eventsourcing.persistence import IntegrityError

    from ledger_service.app.ledger import UnitOfWork
    from ledger_service.app.recorder import IdempotencyRow

    a = open_prepay(ledger, "5.00")
    before = ledger.load(a).version
    taken = f"taken-{a}"
    ledger.query("INSERT INTO {schema}.idempotency_keys (scope, key, account_id)"
                 " VALUES ('test', %s, %s)", (taken, a))

    def command(work: UnitOfWork) -> None:
        account = work.touch(ledger.load(a))
        account.grant(f"g-{a}", "bonus", 1_000_000, datetime.now(UTC), reason="test")
        assert len(account.pending_events) == 1
        work.rows.keys.extend(IdempotencyRow("test", f"new-{a}-{i}", a) for i in range(rows - 1))
        work.rows.keys.append(IdempotencyRow("test", taken, a))

    with pytest.raises(IntegrityError):
        ledger.commit(_unit(ledger, command))
    ledger.evict([a])
    assert ledger.load(a).version == before  # no event
    assert ledger.seen_keys("test", [f"new-{a}-0"]) == set()  # no side row
    assert accounts.grant_credit(  # the next save on the same connections works
        ledger, a, GrantCredit(kind="purchased", amount="1.00", reason="after"), "tester",
        Idempotency("http:grant", None, "h")).response


def _unit(ledger: Ledger, command):  # type: ignore[no-untyped-def]
    from ledger_service.app.ledger import UnitOfWork

    work = UnitOfWork()
    command(work)
    return work


async def test_a_refused_publication_keeps_the_position(ledger: Ledger, nats_client) -> None:  # type: ignore[no-untyped-def]
    from ledger_service.publisher import EventPublisher, PublishRefused
    from services.broker import stream_config

    js = await ledger_stream(nats_client)
    a = open_prepay(ledger, "5.00")
    intake.apply_usage(ledger, [usage(a, f"refused-{a}")])
    publisher = EventPublisher(ledger, nats_client, puback_timeout_s=2)
    head = await publisher.publish_round(0)
    assert head is not None
    intake.apply_usage(ledger, [usage(a, f"refused-2-{a}")])
    full = (await js.stream_info("LEDGER")).state.messages
    config = stream_config("LEDGER")
    config.max_msgs = full  # the stream is full: it refuses new messages (DiscardPolicy.NEW)
    await js.update_stream(config)
    try:
        with pytest.raises(PublishRefused):
            await publisher.publish_round(head)
        assert publisher._position() == head  # not moved past what was refused
    finally:
        await js.update_stream(stream_config("LEDGER"))
    assert await publisher.publish_round(head) is not None  # room again: it goes through


async def test_a_message_no_stream_captures_is_refused_not_waited_for(nats_client) -> None:  # type: ignore[no-untyped-def]
    import time

    from ledger_service.publisher import PubAcks, PublishRefused

    acks = PubAcks()
    started = time.perf_counter()
    try:
        with pytest.raises(PublishRefused, match="status 503"):
            await acks.publish(nats_client, [("no.stream.here", "id-1", {"a": 1})], 10)
        assert time.perf_counter() - started < 5  # answered "no responders", not timed out
        js = await ledger_stream(nats_client)
        await acks.publish(nats_client, [("ledger.v1.events.test", f"id-{uuid.uuid4()}",
                                          {"a": 1})], 10)  # the next round goes through
        assert (await js.stream_info("LEDGER")).state.messages > 0
    finally:
        await acks.close()
