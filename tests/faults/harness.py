"""The fault harness: for each fault, a steady load, the fault, the end of the load, the
backlog drained, then the checks, and one line of the table `make faults` prints.

Checks after every fault:
- every acknowledged usage event applied exactly once: its statement line is there once
  (lost: none; doubled: more than one), and each account's balance is exactly its credit
  less the price of the events applied to it;
- every approved authorization still a hold, or captured by the usage event that named it;
- `ledgerctl verify` clean (hash chains, zero-sum postings, balances, projections, snapshots);
- dead letters only for the malformed messages the load sent on purpose, and one for each.

A fault is an entry of FAULTS: how it breaks the stack (`inject`, run in a thread while the
load goes on), and what "recovered" means beyond the default (every service ready, and a
usage event published after the fault applied by the ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import nats.errors
import nats.js.errors

from ledger_service.settings import LedgerSettings
from services.fault_points import FAULT_EXIT_CODE
from services.settings import StackSettings
from tests.fakes.stripe import event, sign_payload
from tests.faults.load import (
    RETRIABLE,
    Load,
    Sent,
    close,
    connect,
    percentile,
    publish_acknowledged,
    send_malformed,
)
from tests.faults.stack import OPERATOR, WEBHOOK_SECRET, Service, Stack, wait_for

SMS_PRICE_MICROS = 39_500  # the default catalogue's GBP starter price of one sms
CREDIT = "100000.00"
CREDIT_MICROS = 100_000_000_000
ACCOUNTS = 20
USAGE_PER_S = float(os.environ.get("FAULTS_USAGE_PER_S", "150"))
AUTHORIZE_PER_S = float(os.environ.get("FAULTS_AUTHORIZE_PER_S", "20"))
WARM_UP_S = 6.0  # load before the fault
STEADY_AFTER_S = 4.0  # load after recovery
RECOVERY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 180.0


@dataclass
class Outcome:
    """One line of the table, and what the assertions look at."""

    fault: str
    events: int = 0
    lost: int = 0
    doubled: int = 0
    recovery_s: float | None = None
    approved: int = 0
    holds_missing: int = 0
    balances_wrong: int = 0
    dead_letters_expected: int = 0
    dead_letters_found: int = 0
    dead_letters_unexpected: int = 0
    verify_ok: bool = False
    verify_detail: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return (self.skipped is None and self.lost == 0 and self.doubled == 0
                and self.holds_missing == 0 and self.balances_wrong == 0 and self.verify_ok
                and self.dead_letters_unexpected == 0
                and self.dead_letters_found == self.dead_letters_expected)


@dataclass
class Context:
    """What an injection may use and report."""

    stack: Stack
    loop: asyncio.AbstractEventLoop
    notes: list[str]
    sent: Sent
    extra_recovery: list[Callable[[], bool]] = field(default_factory=list)
    # When the fault itself happened, if later than the start of `inject` (which may first
    # have to set the stage): recovery is timed from here.
    fault_at: float | None = None

    nc: Any = None

    def stack_js(self) -> Any:
        return self.nc.jetstream()

    def run(self, coro: Any, timeout_s: float = 60) -> Any:
        """Run a coroutine on the test's loop from the injection's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


@dataclass(frozen=True)
class Fault:
    key: str
    title: str
    inject: Callable[[Context], None]
    unsupported: Callable[[], str | None] = lambda: None
    ledger_processes: int = 1


# ------------------------------------------------------------------ the faults


def kill_nats_node(ctx: Context) -> None:
    """SIGKILL the node leading the USAGE stream (so its RAFT group must elect), run on two
    nodes for a while, then start it again on its store; it rejoins and catches up."""
    leader = ctx.run(stream_leader(ctx.stack, "USAGE"))
    victim = int(leader.rsplit("-", 1)[1]) if leader else 0
    ctx.stack.nats.kill(victim)
    killed_at = time.monotonic()
    probe = f"{ctx.sent.label}-after-kill"
    body = json.dumps({"event_id": probe, "account_id": "not-a-uuid"}).encode()
    ctx.sent.malformed.append(probe)  # unreadable: dead-lettered once, never applied
    assert ctx.run(publish_acknowledged(ctx.stack_js(), "usage.v1.recorded", body, probe,
                                        ctx.sent), 120)
    ctx.notes.append(f"killed billing-{victim} (the USAGE stream's leader: {leader});"
                     f" publishes acknowledged again {time.monotonic() - killed_at:.1f} s later")
    time.sleep(max(0.0, 8 - (time.monotonic() - killed_at)))
    assert all(s.process is not None and s.process.poll() is None for s in ctx.stack.services)
    ctx.stack.nats.restart(victim)
    ctx.extra_recovery.append(lambda: ctx.run(stream_current(ctx.stack, "USAGE"), 10))


def restart_postgres(ctx: Context) -> None:
    """Every backend dies at once (`pg_ctl stop -m immediate`); readyz must turn 503; start
    it again 3 s later; nobody restarts a service: intake must resume by itself."""
    stack = ctx.stack
    pids = {s.package: s.pid for s in stack.services}
    stack.postgres.stop_immediately()
    went_503 = wait_for(lambda: stack.ledger.readyz() == 503, 30, "ledger readyz 503")
    ctx.notes.append(f"readyz 503 after {went_503:.1f} s")
    time.sleep(3)
    stack.postgres.start()

    def same_processes() -> bool:
        assert {s.package: s.pid for s in stack.services} == pids, "a service was restarted"
        assert all(s.process is not None and s.process.poll() is None for s in stack.services)
        return True

    ctx.extra_recovery.append(same_processes)


def kill_follower(ctx: Context) -> None:
    """Let the follower fall behind (SIGSTOP while the load goes on), let it start its
    catch-up (SIGCONT), and SIGKILL it inside that catch-up. The ledger service must start a
    new one, which ends with every projection exact."""
    stack = ctx.stack
    [pid] = stack.follower_pids()
    os.kill(pid, signal.SIGSTOP)
    time.sleep(6)
    with stack.connect() as conn:
        before = projection_positions(conn)
        head = log_head(conn)
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.03)
    os.kill(pid, signal.SIGKILL)
    with stack.connect() as conn:
        at_kill = projection_positions(conn)
    behind = head - min(at_kill.values())
    ctx.notes.append(f"killed mid catch-up: {head - min(before.values())} events behind"
                     f" at SIGCONT, {behind} still behind at SIGKILL")
    assert behind > 0, "the follower finished its catch-up before the kill: window missed"

    def replaced_and_caught_up() -> bool:
        pids = stack.follower_pids()
        if not pids or pids == [pid]:
            return False
        with stack.connect() as conn:
            return min(projection_positions(conn).values()) >= head

    ctx.extra_recovery.append(replaced_and_caught_up)


def kill_payments_after_commit(ctx: Context) -> None:
    """payments_service with FAULT_INJECT=outbox.before_publish exits (os._exit) once its
    relay claimed a committed payment and before publishing it. Started again without the
    setting, it must publish it, and the ledger credit it once, however often Stripe
    delivers the webhook."""
    stack = ctx.stack
    payments = stack.payments
    payments.stop()
    payments.start(FAULT_INJECT="outbox.before_publish").wait_ready()
    account = open_account(stack.ledger, credit=None)
    checkout = httpx.post(f"{payments.url}/v1/checkout/topups", headers=OPERATOR, timeout=30,
                          json={"account_id": account, "amount": "100.00"})
    assert checkout.status_code == 201, checkout.text
    session = checkout.json()["session_id"]
    completed = event("checkout.session.completed",
                      stack.stripe.paid_session(session, f"pi_{uuid.uuid4().hex[:24]}"))
    # The relay, woken by the commit, may exit before the webhook's answer is sent (Stripe
    # would deliver again, as below); the unsent row checked next proves the commit.
    with contextlib.suppress(httpx.TransportError):
        assert deliver(payments, completed).status_code == 200
    assert payments.process is not None
    code = payments.process.wait(30)
    ctx.fault_at = time.monotonic()
    assert code == FAULT_EXIT_CODE, f"payments exited with {code}, not at the fault point"
    with stack.connect() as conn:
        unsent = conn.execute("SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL"
                              " AND subject = 'payments.v1.received'").fetchone()
    assert unsent is not None and unsent[0] >= 1, "the payment's message was not left unsent"
    ctx.notes.append(f"exited at the fault point (code {code}) with {unsent[0]} committed,"
                     " unpublished payment message")
    assert balance_micros(stack.ledger, account) == 0
    payments.start().wait_ready()
    assert deliver(payments, completed).status_code == 200  # Stripe retries meanwhile

    def credited_once() -> bool:
        if balance_micros(stack.ledger, account) != 100_000_000:
            return False
        time.sleep(1)  # a second credit would arrive within the relay's poll
        assert balance_micros(stack.ledger, account) == 100_000_000, "payment credited twice"
        return True

    ctx.extra_recovery.append(credited_once)


def kill_ledger_mid_batch(ctx: Context) -> None:
    """SIGKILL the ledger while an intake batch is in flight (delivered, not acked), and
    start it again (as `make run`'s supervisor does). Its follower notices the parent gone."""
    stack = ctx.stack
    in_flight = wait_for(lambda: ctx.run(ack_pending(stack, "USAGE", "ledger-usage"), 10) > 0,
                         30, "an intake batch in flight", 0.005)
    pending = ctx.run(ack_pending(stack, "USAGE", "ledger-usage"), 10)
    stack.ledger.kill()
    ctx.notes.append(f"SIGKILL with {pending} usage messages delivered and not acked"
                     f" (waited {in_flight:.2f} s for a batch)")
    time.sleep(1)  # the runner's first back-off
    stack.ledger.start().wait_ready()


def kill_partition_owner(ctx: Context) -> None:
    """Two ledger processes own the account partitions (LEDGER_PROCESSES=2, leases in
    PostgreSQL); SIGKILL one mid-batch: its partitions move to the other, nothing is lost or
    doubled, and it starts again."""
    stack = ctx.stack
    victim = stack.extra_ledgers[0]
    wait_for(lambda: ctx.run(ack_pending(stack, "USAGE", "ledger-usage"), 10) > 0,
             30, "an intake batch in flight", 0.005)
    victim.kill()
    ctx.notes.append("SIGKILL of one partition owner of two")
    time.sleep(1)
    victim.start().wait_ready()


def partitions_unsupported() -> str | None:
    known = {f.name for settings in (LedgerSettings, StackSettings)
             for f in msgspec.structs.fields(settings)}
    if "ledger_processes" in known:
        return None
    return ("LEDGER_PROCESSES (a partitioned ledger) is not supported by this checkout yet:"
            " branch `partition` adds it")


FAULTS: tuple[Fault, ...] = (
    Fault("nats-node", "kill 1 NATS node of 3, restart it", kill_nats_node),
    Fault("postgres", "restart PostgreSQL (immediate)", restart_postgres),
    Fault("follower", "kill -9 ledger follower mid catch-up", kill_follower),
    Fault("payments-outbox", "kill payments after commit, before publish",
          kill_payments_after_commit),
    Fault("ledger", "kill -9 the ledger mid-batch", kill_ledger_mid_batch),
    Fault("partition-owner", "kill -9 1 partition owner of 2", kill_partition_owner,
          unsupported=partitions_unsupported, ledger_processes=2),
)


# ------------------------------------------------------------------ running one fault


async def run_fault(stack: Stack, fault: Fault) -> Outcome:
    outcome = Outcome(fault.title)
    label = f"{fault.key}-{uuid.uuid4().hex[:6]}"
    accounts = await asyncio.to_thread(lambda: [open_account(stack.ledger)
                                                for _ in range(ACCOUNTS)])
    nc = await connect(stack.nats_url)
    sent = Sent(label)
    try:
        dead_letters_before = await retrying(lambda: last_sequence(nc, "DEADLETTER"))
        load = Load(nc, accounts, sent, usage_per_s=USAGE_PER_S,
                    authorize_per_s=AUTHORIZE_PER_S)
        load.start()
        await asyncio.sleep(WARM_UP_S)
        await send_malformed(nc.jetstream(), sent)
        ctx = Context(stack, asyncio.get_running_loop(), outcome.notes, sent)
        ctx.nc = nc
        injected_at = time.monotonic()
        try:
            await asyncio.to_thread(fault.inject, ctx)
            outcome.recovery_s = await recovered(stack, nc, ctx, label,
                                                 ctx.fault_at or injected_at)
            await asyncio.sleep(STEADY_AFTER_S)
        finally:
            await load.stop()
        await drain(stack, nc)
        await check(stack, nc, sent, accounts, dead_letters_before, outcome)
    finally:
        await close(nc)
    outcome.notes.append(f"publish retries {sent.publish_retries}, authorize retries"
                         f" {sent.authorize_retries}, unacknowledged {len(sent.unacked)},"
                         f" unanswered {sent.unanswered}, authorize p99"
                         f" {1000 * (percentile(sent.authorize_latencies_s, 0.99) or 0):.0f} ms")
    return outcome


async def recovered(stack: Stack, nc: Any, ctx: Context, label: str, since: float) -> float:
    """Seconds from the fault to: every service ready, a usage event published after the
    fault applied by the ledger, and the fault's own conditions."""
    probe = f"{label}-probe"
    body = json.dumps({"event_id": probe, "account_id": str(uuid.UUID(int=0)),
                       "product": "sms", "quantity": 1, "status": "submitted",
                       "occurred_at": "2026-12-01T00:00:00Z"}).encode()
    # An unknown account: the ledger dead-letters it, which is proof enough that intake runs.
    ctx.sent.malformed.append(probe)
    assert await publish_acknowledged(nc.jetstream(), "usage.v1.recorded", body, probe,
                                      ctx.sent)
    deadline = since + RECOVERY_TIMEOUT_S
    pending = [lambda: stack.all_ready(), lambda: probe_dead_lettered(stack, nc, probe, ctx),
               *ctx.extra_recovery]
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"not recovered within {RECOVERY_TIMEOUT_S:g} s")
        if await asyncio.to_thread(pending[0]):
            pending.pop(0)
        else:
            await asyncio.sleep(0.2)
    return time.monotonic() - since


def probe_dead_lettered(stack: Stack, nc: Any, probe: str, ctx: Context) -> bool:
    letters = ctx.run(dead_letters(nc, 0), 30)
    return any(letter.get("msg_id") == probe for _, letter in letters)


async def drain(stack: Stack, nc: Any) -> None:
    """Until the ledger acked every usage and payment message, and every projection reached
    the head of the log."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        backlog = 0
        for stream, durable in (("USAGE", "ledger-usage"),
                                ("PAYMENTS", "ledger-payments-received")):
            info = await retrying(functools.partial(nc.jetstream().consumer_info, stream, durable))
            backlog += info.num_pending + info.num_ack_pending
        if backlog == 0:
            def caught_up() -> bool:
                with stack.connect() as conn:
                    return min(projection_positions(conn).values()) >= log_head(conn)
            if await asyncio.to_thread(caught_up):
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"backlog not drained within {DRAIN_TIMEOUT_S:g} s")


async def check(stack: Stack, nc: Any, sent: Sent, accounts: Sequence[str],
                dead_letters_before: int, outcome: Outcome) -> None:
    def database() -> None:
        with stack.connect() as conn:
            lines = dict(conn.execute(
                "SELECT reference, count(*) FROM ledger.statement_entries"
                " WHERE account_id = ANY(%s::uuid[]) AND kind = 'usage' GROUP BY reference",
                (list(accounts),)).fetchall())
            balances = dict(conn.execute(
                "SELECT account_id::text, balance_micros FROM ledger.balances"
                " WHERE account_id = ANY(%s::uuid[])", (list(accounts),)).fetchall())
            open_holds = {row[0] for row in conn.execute(
                "SELECT hold_id FROM ledger.open_holds WHERE account_id = ANY(%s::uuid[])",
                (list(accounts),)).fetchall()}
        outcome.events = sent.events
        outcome.lost = sum(1 for event_id in sent.acked if lines.get(event_id, 0) == 0)
        outcome.doubled = sum(1 for count in lines.values() if count > 1)
        applied: dict[str, int] = {}
        for event_id, account in {**sent.unacked, **sent.acked}.items():
            if lines.get(event_id):
                applied[account] = applied.get(account, 0) + 1
        outcome.balances_wrong = sum(
            1 for account in accounts
            if balances.get(account) != CREDIT_MICROS - SMS_PRICE_MICROS * applied.get(account, 0))
        outcome.approved = len(sent.approved)
        outcome.holds_missing = sum(
            1 for hold_id in sent.approved
            if hold_id not in open_holds
            and not lines.get(sent.captured_by.get(hold_id, ""), 0))

    await asyncio.to_thread(database)
    letters = [letter for sequence, letter in await dead_letters(nc, dead_letters_before)
               if sequence > dead_letters_before]
    expected = set(sent.malformed)
    found = {letter.get("msg_id") for letter in letters}
    outcome.dead_letters_expected = len(expected)
    outcome.dead_letters_found = len(expected & found)
    outcome.dead_letters_unexpected = sum(1 for letter in letters
                                          if letter.get("msg_id") not in expected)
    verify = await asyncio.to_thread(stack.ledgerctl, "verify", "--json")
    outcome.verify_ok = verify.returncode == 0
    if not outcome.verify_ok:
        outcome.verify_detail = (verify.stdout + verify.stderr)[-3000:]


# ------------------------------------------------------------------ NATS and database reads


async def retrying(call: Callable[[], Any], deadline_s: float = 60) -> Any:
    """A JetStream API request, asked again while the cluster settles its leaders."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except RETRIABLE:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def stream_leader(stack: Stack, stream: str) -> str | None:
    nc = await connect(stack.nats_url)
    try:
        info = await retrying(lambda: nc.jetstream().stream_info(stream))
        return info.cluster.leader if info.cluster else None
    finally:
        await close(nc)


async def stream_current(stack: Stack, stream: str) -> bool:
    """Every replica of the stream is back and current."""
    nc = await connect(stack.nats_url)
    try:
        info = await retrying(lambda: nc.jetstream().stream_info(stream))
        replicas = (info.cluster.replicas or []) if info.cluster else []
        return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)
    finally:
        await close(nc)


async def ack_pending(stack: Stack, stream: str, durable: str) -> int:
    nc = await connect(stack.nats_url)
    try:
        info = await retrying(lambda: nc.jetstream().consumer_info(stream, durable))
        return int(info.num_ack_pending)
    finally:
        await close(nc)


async def last_sequence(nc: Any, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.last_seq)


async def dead_letters(nc: Any, after: int) -> list[tuple[int, dict[str, Any]]]:
    """Every dead letter stored after stream sequence `after`, with its sequence."""
    js = nc.jetstream()
    last = await retrying(lambda: last_sequence(nc, "DEADLETTER"))
    found: list[tuple[int, dict[str, Any]]] = []
    for sequence in range(after + 1, last + 1):
        try:
            msg = await retrying(functools.partial(js.get_msg, "DEADLETTER", sequence))
        except nats.js.errors.NotFoundError:
            continue
        with contextlib.suppress(ValueError):
            found.append((sequence, json.loads(msg.data)))
    return found


def projection_positions(conn: Any) -> dict[str, int]:
    return dict(conn.execute("SELECT name, position FROM ledger.projection_positions").fetchall())


def log_head(conn: Any) -> int:
    row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM ledger.ledger_events"
                       ).fetchone()
    return int(row[0]) if row else 0


# ------------------------------------------------------------------ HTTP


def open_account(ledger: Service, credit: str | None = CREDIT) -> str:
    account = str(uuid.uuid4())
    opened = httpx.post(f"{ledger.url}/v1/accounts", headers={
        **OPERATOR, "Idempotency-Key": f"open-{account}"}, timeout=30, json={
        "account_id": account, "type": "prepay", "currency": "GBP", "tax": {"country": "GB"}})
    assert opened.status_code == 201, opened.text
    if credit is not None:
        granted = httpx.post(f"{ledger.url}/v1/accounts/{account}/credits", headers={
            **OPERATOR, "Idempotency-Key": f"grant-{account}"}, timeout=30,
            json={"kind": "purchased", "amount": credit, "reason": "fault test credit"})
        assert granted.status_code in (200, 201), granted.text
    return account


def balance_micros(ledger: Service, account: str) -> int:
    response = httpx.get(f"{ledger.url}/v1/accounts/{account}/balance", headers=OPERATOR,
                         timeout=10)
    assert response.status_code == 200, response.text
    whole, _, fraction = str(response.json()["balance"]).partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 1_000_000 + int((fraction + "000000")[:6]))


def deliver(payments: Service, payload: dict[str, object]) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(f"{payments.url}/v1/webhooks/stripe", content=body, timeout=30, headers={
        "Stripe-Signature": sign_payload(body, WEBHOOK_SECRET),
        "Content-Type": "application/json"})


# ------------------------------------------------------------------ the table


def table(outcomes: Sequence[Outcome]) -> str:
    header = (f"{'fault':<46} {'events sent':>11} {'lost':>5} {'doubled':>7}"
              f" {'recovery':>9}  result")
    lines = [header, "-" * len(header)]
    for o in outcomes:
        if o.skipped:
            lines.append(f"{o.fault:<46} {'-':>11} {'-':>5} {'-':>7} {'-':>9}  skipped: {o.skipped}")
            continue
        recovery = f"{o.recovery_s:.1f} s" if o.recovery_s is not None else "-"
        verdict = "ok" if o.ok else "FAILED"
        lines.append(f"{o.fault:<46} {o.events:>11,} {o.lost:>5} {o.doubled:>7} {recovery:>9}"
                     f"  {verdict}")
        lines.append(f"    holds approved {o.approved:,} (missing {o.holds_missing}),"
                     f" balances wrong {o.balances_wrong}, verify"
                     f" {'clean' if o.verify_ok else 'DIVERGENT'}, dead letters"
                     f" {o.dead_letters_found}/{o.dead_letters_expected} expected,"
                     f" {o.dead_letters_unexpected} unexpected")
        lines.extend(f"    {note}" for note in o.notes)
    return "\n".join(lines)


__all__ = ["FAULTS", "Fault", "Outcome", "run_fault", "table"]
_ = nats.errors  # re-exported errors are caught through RETRIABLE
