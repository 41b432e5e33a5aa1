"""intake_e2e: usage published to JetStream, rated, committed and acked by the ledger service.

Target (issue 3): at least 20,000 events/s sustained over 100,000 events spread over 1,000
accounts.

1. A fresh database; 1,000 prepay accounts opened in-process with enough credit (see
   bench/accounts.py), then the ledger service started as its own process on our database
   and our own nats-server.
2. 100,000 ``usage.v1.recorded`` messages (Nats-Msg-Id = event id, round-robin over the
   accounts) published with nats-py ``publish_async`` as fast as the client can.
3. The clock stops when the durable ``ledger-usage`` on USAGE has nothing pending and nothing
   awaiting ack, and its ack floor is the last published sequence: every message is committed
   in PostgreSQL and acked. The end-to-end rate is events / (first publish -> that moment);
   the sustained rate is taken between 10 % and 90 % of the acks, which leaves out the start
   and the tail.
4. A backlog: the service stops, the same number of new events is published, and a fresh
   service drains them. No generator shares the cores while it drains (in production the
   producers are other machines), so this is intake's own capacity on this machine.
5. The figures count only if the work is right: every account's balance is its credit minus
   its events x unit price (so the sum of debits is 200,000 x 0.0395), there is exactly one
   idempotency key per event, and no dead letter.

Raw baselines in the same run (bench/baselines.py): nats-py publishing and pull-consuming
the same messages with no ledger; psycopg inserting equivalent rows; and the app layer alone,
``intake.apply_usage`` called in-process in the service's batch size on 1,000 other accounts
of the same database, which is the ledger's own work without NATS, the event loop, the
publisher or the projections.

The service also publishes ``ledger.v1.events.entry_posted`` for every line from its
notification log (that is part of its work on the same 2 cores); we report when that
catches up too, outside the intake figure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import nats
import psycopg
from nats.js.client import JetStreamContext

from bench import baselines, infra
from bench.accounts import SMS_UNIT_PRICE_MICROS, fresh_database_with_accounts, open_prepay_accounts
from bench.baselines import Message
from bench.cpu import CpuMeter
from bench.options import RunOptions, profiled
from bench.stats import rate_per_s
from contracts.subjects import USAGE_RECORDED
from contracts.usage import UsageRecorded
from ledger_service.app import intake
from ledger_service.messaging import INTAKE_BATCH_SIZE_MAX
from services.database import conninfo
from services.embedded import NatsProcess

NAME = "intake_e2e"
DURABLE = "ledger-usage"
POLL_INTERVAL_S = 0.02
DRAIN_TIMEOUT_S = 600.0
PUBLISHER_CATCH_UP_TIMEOUT_S = 300.0
CREDIT_MICROS = 1_000_000_000  # 1,000.00 GBP: far more than 100 SMS
TARGET_RATE_PER_S = 20_000


@dataclass(frozen=True, slots=True)
class Settings:
    accounts: int
    events: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        return cls(accounts=100, events=10_000) if quick else cls(accounts=1_000, events=100_000)


def run(options: RunOptions) -> dict[str, Any]:
    settings = Settings.for_mode(options.quick)
    url, account_ids = fresh_database_with_accounts(settings.accounts, CREDIT_MICROS)
    messages = usage_messages(account_ids, settings.events)
    result: dict[str, Any] = {"benchmark": NAME, "accounts": settings.accounts,
                              "events": settings.events,
                              "accounts_opened": "in-process via the domain and Ledger.run"}
    with infra.own_nats() as nats_server:
        result["baseline_nats"] = asyncio.run(baselines.nats_baselines(nats_server.url, messages))
        with infra.LedgerProcess(url, nats_server.url) as service, infra.AutoAnalyze(url):
            meter = infra.service_meter(url, nats_server, service)
            with profiled(options, service.pid, f"{NAME}-service"):
                result["e2e"] = asyncio.run(publish_and_drain(nats_server.url, messages, meter))
            result["downstream"] = asyncio.run(wait_for_entry_events(
                nats_server.url, expected=settings.events + settings.accounts,
                started_s=result["e2e"]["started_monotonic_s"]))
        result["backlog"] = drain_backlog(url, nats_server, account_ids, settings.events)
        dead_letters = asyncio.run(dead_letter_count(nats_server.url))
    result["verification"] = verify(url, account_ids, 2 * settings.events, dead_letters)
    result["store"] = store_shape(url)
    result["baseline_postgres"] = baselines.postgres_baselines(url, messages)
    result["baseline_app_in_process"] = app_in_process(url, settings)
    result["target_met"] = (result["verification"]["ok"]
                            and result["e2e"]["rate_per_s_end_to_end"] >= TARGET_RATE_PER_S)
    result["target_met_draining_a_backlog"] = (
        result["verification"]["ok"]
        and result["backlog"]["rate_per_s_sustained_10_90"] >= TARGET_RATE_PER_S)
    return result


def usage_messages(account_ids: Sequence[UUID], count: int, prefix: str = "bench-usage") -> list[Message]:
    occurred_at = datetime.now(UTC)
    messages = []
    for index in range(count):
        account_id = account_ids[index % len(account_ids)]
        event_id = f"{prefix}-{index:07d}"
        payload = msgspec.json.encode({
            "event_id": event_id, "account_id": account_id, "product": "sms", "quantity": 1,
            "occurred_at": occurred_at, "status": "submitted", "reference": f"campaign-{index % 97}",
        })
        messages.append((event_id, account_id, payload))
    return messages


# ------------------------------------------------------------------ the run


async def publish_and_drain(nats_url: str, messages: Sequence[Message], meter: CpuMeter) -> dict[str, Any]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        meter.start()
        started_s = time.perf_counter()
        publish_s = await baselines.publish_all(js, USAGE_RECORDED, messages)
        last_seq = (await js.stream_info("USAGE")).state.last_seq
        progress = await wait_until_acked(js, last_seq, started_s)
        elapsed_s = time.perf_counter() - started_s
        cpu = meter.stop()
    finally:
        await nc.close()
    count = len(messages)
    e2e = {
        "rate_per_s_publish_during_run": round(rate_per_s(count, publish_s)),
        "publish_s": round(publish_s, 2),
        "elapsed_s": round(elapsed_s, 2),
        "rate_per_s_end_to_end": round(rate_per_s(count, elapsed_s)),
        "rate_per_s_sustained_10_90": round(sustained_rate(progress, count)),
        "progress": [(round(t, 2), acked) for t, acked in progress[:: max(1, len(progress) // 40)]],
        "cpu": cpu.as_dict(),
        "started_monotonic_s": started_s,
    }
    print(f"  {NAME}: {count:,} events in {elapsed_s:.2f} s = {e2e['rate_per_s_end_to_end']:,}/s"
          f" end to end (sustained {e2e['rate_per_s_sustained_10_90']:,}/s); {cpu.line()}",
          flush=True)
    return e2e


async def wait_until_acked(js: JetStreamContext, last_seq: int, started_s: float) -> list[tuple[float, int]]:
    """Poll the durable until everything up to ``last_seq`` is acked; returns the (seconds
    since start, messages acked) samples."""
    progress: list[tuple[float, int]] = []
    deadline_s = time.perf_counter() + DRAIN_TIMEOUT_S
    while time.perf_counter() < deadline_s:
        info = await js.consumer_info("USAGE", DURABLE)
        acked = info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0
        progress.append((time.perf_counter() - started_s, acked))
        if info.num_pending == 0 and info.num_ack_pending == 0 and acked >= last_seq:
            return progress
        await asyncio.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"intake did not drain in {DRAIN_TIMEOUT_S}s: {progress[-1]}")


def drain_backlog(url: str, nats_server: NatsProcess, account_ids: Sequence[UUID],
                  count: int) -> dict[str, Any]:
    """The same number of events again, published while the service is stopped, then
    drained by a fresh service: intake's own capacity, with no generator sharing the cores
    (producers run on other machines in production). Timed from the service's readiness;
    the sustained rate (10-90 % of the acks) leaves out its start-up either way."""
    messages = usage_messages(account_ids, count, prefix="bench-backlog")
    nats_url = nats_server.url

    async def publish() -> int:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await baselines.publish_all(js, USAGE_RECORDED, messages)
            return int((await js.stream_info("USAGE")).state.last_seq)
        finally:
            await nc.close()

    last_seq = asyncio.run(publish())
    with infra.LedgerProcess(url, nats_url) as service, infra.AutoAnalyze(url):
        meter = infra.service_meter(url, nats_server, service)

        async def drain() -> tuple[list[tuple[float, int]], float]:
            nc = await nats.connect(nats_url)
            try:
                meter.start()
                started_s = time.perf_counter()
                progress = await wait_until_acked(nc.jetstream(), last_seq, started_s)
                return progress, time.perf_counter() - started_s
            finally:
                await nc.close()

        progress, elapsed_s = asyncio.run(drain())
        cpu = meter.stop()
    first_acked = progress[0][1]
    backlog = {
        "events": count, "elapsed_s_from_ready": round(elapsed_s, 2),
        "acked_before_ready": max(0, first_acked - (last_seq - count)),
        "rate_per_s_from_ready": round(rate_per_s(count, elapsed_s)),
        "rate_per_s_sustained_10_90": round(sustained_rate(
            [(t, n - (last_seq - count)) for t, n in progress], count)),
        "cpu": cpu.as_dict(),
    }
    print(f"  {NAME}: a backlog of {count:,} events drained at"
          f" {backlog['rate_per_s_sustained_10_90']:,}/s sustained"
          f" ({backlog['rate_per_s_from_ready']:,}/s from readiness); {cpu.line()}", flush=True)
    return backlog


def sustained_rate(progress: Sequence[tuple[float, int]], count: int) -> float:
    """Acks per second between the samples where 10 % and 90 % were acked."""
    low = next((t, n) for t, n in progress if n >= count * 0.1)
    high = next((t, n) for t, n in progress if n >= count * 0.9)
    return rate_per_s(high[1] - low[1], high[0] - low[0])


async def wait_for_entry_events(nats_url: str, expected: int, started_s: float) -> dict[str, Any]:
    """When the service's publisher has put every entry on LEDGER (not part of the intake figure)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline_s = time.perf_counter() + PUBLISHER_CATCH_UP_TIMEOUT_S
        while time.perf_counter() < deadline_s:
            messages = (await js.stream_info("LEDGER")).state.messages
            if messages >= expected:
                elapsed_s = time.perf_counter() - started_s
                return {"entry_events": messages, "caught_up_s_after_first_publish": round(elapsed_s, 2)}
            await asyncio.sleep(0.1)
        return {"entry_events": messages, "caught_up_s_after_first_publish": None}
    finally:
        await nc.close()


# ------------------------------------------------------------------ the app layer alone


def app_in_process(url: str, settings: Settings) -> dict[str, Any]:
    """``intake.apply_usage`` called directly, in batches as the service's consumer gets
    them, on other accounts of the same database, with the service's collector settings:
    the ledger's own work without NATS, the event loop, the publisher or the projections."""
    ledger = infra.open_ledger(url)
    try:
        account_ids = open_prepay_accounts(ledger, settings.accounts, CREDIT_MICROS)
        decoder = msgspec.json.Decoder(UsageRecorded)
        decoded = [decoder.decode(payload) for _, _, payload in
                   usage_messages(account_ids, settings.events, prefix="bench-app")]
        with infra.collector_as_in_the_services():
            started_s = time.perf_counter()
            verdicts = []
            for start in range(0, len(decoded), INTAKE_BATCH_SIZE_MAX):
                verdicts.extend(intake.apply_usage(
                    ledger, decoded[start:start + INTAKE_BATCH_SIZE_MAX]))
            elapsed_s = time.perf_counter() - started_s
    finally:
        ledger.app.close()
    applied = sum(1 for verdict in verdicts if verdict.outcome == "applied")
    assert applied == settings.events, f"only {applied} of {settings.events} applied"
    rate = rate_per_s(applied, elapsed_s)
    print(f"  {NAME}: app layer alone (apply_usage in-process, batches of"
          f" {INTAKE_BATCH_SIZE_MAX:,}): {rate:,.0f} events/s", flush=True)
    return {"events": applied, "batch_size": INTAKE_BATCH_SIZE_MAX, "elapsed_s": round(elapsed_s, 2),
            "rate_per_s": round(rate)}


# ------------------------------------------------------------------ checks


def verify(url: str, account_ids: Sequence[UUID], events: int, dead_letters: int) -> dict[str, Any]:
    ledger = infra.open_ledger(url)
    try:
        per_account, extra = divmod(events, len(account_ids))
        wrong = []
        debits_micros = 0
        for index, account_id in enumerate(account_ids):
            expected_events = per_account + (1 if index < extra else 0)
            balance = ledger.read(account_id).balance_micros
            debits_micros += CREDIT_MICROS - balance
            if balance != CREDIT_MICROS - expected_events * SMS_UNIT_PRICE_MICROS:
                wrong.append(str(account_id))
    finally:
        ledger.app.close()
    keys = _usage_keys(url)
    ok = (not wrong and debits_micros == events * SMS_UNIT_PRICE_MICROS and keys == events
          and dead_letters == 0)
    return {"ok": ok, "accounts_wrong": len(wrong), "debits_micros": debits_micros,
            "debits_micros_expected": events * SMS_UNIT_PRICE_MICROS,
            "idempotency_keys": keys, "dead_letters": dead_letters}


def _usage_keys(url: str) -> int:
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute("SELECT count(*) FROM ledger.idempotency_keys WHERE scope = 'usage'").fetchone()
    return int(row[0]) if row else 0


async def dead_letter_count(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info("DEADLETTER")).state.messages)
    finally:
        await nc.close()


def store_shape(url: str) -> dict[str, Any]:
    """How the service batched: stored UsageRecorded events and lines per event."""
    with psycopg.connect(conninfo(url)) as conn:
        row = conn.execute(
            "SELECT count(*), max(length(state)) FROM ledger.ledger_events"
            " WHERE topic LIKE '%UsageRecorded'").fetchone()
    events, state_bytes_max = (int(row[0]), int(row[1] or 0)) if row else (0, 0)
    return {"usage_events_stored": events, "event_state_bytes_max": state_bytes_max}
