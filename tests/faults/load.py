"""A steady load of usage events and authorizations, as the platform's senders make it, and
the record of what was sent: which usage events JetStream acknowledged, which authorizations
the ledger approved, which malformed messages went out on purpose.

The load behaves as a careful producer: a publish that times out or meets a stream without
a leader ("no response from stream", during a RAFT election) is sent again with the same
Nats-Msg-Id until acknowledged, and an authorization that times out is asked again with the
same request_id. A usage event counts as sent only once acknowledged; the others are kept
apart (they may or may not be stored, and the ledger may apply them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from contracts.subjects import LEDGER_AUTHORIZE, USAGE_RECORDED

# Every error that means "not acknowledged, try again": a timeout, no stream leader yet, the
# connection between servers, the server answering 503 while JetStream settles.
RETRIABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError, nats.js.errors.APIError, asyncio.TimeoutError,
)
PUBLISH_DEADLINE_S = 90.0
AUTHORIZE_DEADLINE_S = 60.0
INFLIGHT_MAX = 200
HOLD_TTL_S = 3_600  # outlives the run: an approved hold must still be there at the check
MALFORMED = (
    b"{not json",
    json.dumps({"event_id": "x", "product": "sms", "quantity": 1}).encode(),  # no account
    json.dumps({"event_id": "y", "account_id": str(uuid.uuid4()), "product": "sms",
                "quantity": -5, "status": "submitted",
                "occurred_at": "2026-12-01T00:00:00Z"}).encode(),
)


@dataclass
class Sent:
    """What the load did, in the terms the checks need."""

    label: str
    acked: dict[str, str] = field(default_factory=dict)  # event_id -> account_id
    unacked: dict[str, str] = field(default_factory=dict)  # never acknowledged in time
    approved: dict[str, str] = field(default_factory=dict)  # hold_id -> account_id
    captured_by: dict[str, str] = field(default_factory=dict)  # hold_id -> usage event_id
    refused: int = 0
    unanswered: int = 0  # authorizations with no reply before their deadline
    publish_retries: int = 0
    authorize_retries: int = 0
    malformed: list[str] = field(default_factory=list)  # their Nats-Msg-Ids
    # (when finished, seconds taken) for each authorization and each acknowledged publish
    authorize_samples: list[tuple[float, float]] = field(default_factory=list)
    publish_samples: list[tuple[float, float]] = field(default_factory=list)
    acked_by_account: Counter[str] = field(default_factory=Counter)
    # False for a long soak: the per-event ids (a few hundred bytes each) are not kept, only
    # the counts per account.
    keep_ids: bool = True
    first_error_at: float | None = None

    @property
    def events(self) -> int:
        return sum(self.acked_by_account.values())

    @property
    def authorize_latencies_s(self) -> list[float]:
        return [latency for _, latency in self.authorize_samples]


class Load:
    """Usage at `usage_per_s` and authorizations at `authorize_per_s` over `accounts`, until
    stopped; half the approved holds are captured by a usage event naming them."""

    def __init__(self, nc: NATS, accounts: Sequence[str], sent: Sent, *, usage_per_s: float,
                 authorize_per_s: float, seed: int = 7, hold_ttl_s: int = HOLD_TTL_S) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.accounts = list(accounts)
        self.sent = sent
        self.usage_per_s = usage_per_s
        self.authorize_per_s = authorize_per_s
        self.hold_ttl_s = hold_ttl_s
        self.random = random.Random(seed)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = asyncio.Semaphore(INFLIGHT_MAX)
        self._number = 0
        self._drivers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._drivers = [asyncio.create_task(self._drive(self.usage_per_s, self._usage)),
                         asyncio.create_task(self._drive(self.authorize_per_s, self._authorize))]

    async def stop(self) -> None:
        """Stop starting new work; wait for every publish and request in flight to settle."""
        self._stopping.set()
        await asyncio.gather(*self._drivers)
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _drive(self, per_s: float, make: Any) -> None:
        """Start `per_s` operations a second on a fixed schedule (open loop: a slow answer
        does not slow the offered load), in ticks of 20 ms."""
        if per_s <= 0:
            return
        tick_s = 0.02
        started = time.monotonic()
        done = 0
        while not self._stopping.is_set():
            due = int((time.monotonic() - started) * per_s)
            while done < due:
                done += 1
                await self._inflight.acquire()
                self._spawn(make())
            await asyncio.sleep(tick_s)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._inflight.release()

        task.add_done_callback(finished)

    def _next_id(self, kind: str) -> str:
        self._number += 1
        return f"{self.sent.label}-{kind}-{self._number}"

    async def _usage(self, hold: tuple[str, str] | None = None) -> None:
        event_id = self._next_id("u")
        account = hold[1] if hold else self.random.choice(self.accounts)
        body: dict[str, Any] = {
            "event_id": event_id, "account_id": account, "product": "sms", "quantity": 1,
            "status": "submitted", "occurred_at": datetime.now(UTC).isoformat(),
            # the statement's reference column: how the checks find each event's lines
            "reference": event_id}
        if hold:
            body["hold_id"] = hold[0]
        started = time.monotonic()
        if await publish_acknowledged(self.js, USAGE_RECORDED, json.dumps(body).encode(),
                                      event_id, self.sent):
            now = time.monotonic()
            self.sent.publish_samples.append((now, now - started))
            self.sent.acked_by_account[account] += 1
            if self.sent.keep_ids:
                self.sent.acked[event_id] = account
            if hold:
                self.sent.captured_by[hold[0]] = event_id
        else:
            self.sent.unacked[event_id] = account

    async def _authorize(self) -> None:
        request_id = self._next_id("a")
        account = self.random.choice(self.accounts)
        payload = authorize_request(request_id, account, self.hold_ttl_s)
        started = time.monotonic()
        reply = await authorize(self.nc, payload, self.sent)
        now = time.monotonic()
        self.sent.authorize_samples.append((now, now - started))
        if reply is None:
            self.sent.unanswered += 1
        elif reply.get("approved"):
            hold_id = str(reply["hold_id"])
            if self.sent.keep_ids:
                self.sent.approved[hold_id] = account
            if self.random.random() < 0.5:  # captured by the usage it was for
                await self._usage((hold_id, account))
        else:
            self.sent.refused += 1


async def publish_acknowledged(js: Any, subject: str, data: bytes, msg_id: str, sent: Sent,
                               deadline_s: float = PUBLISH_DEADLINE_S) -> bool:
    """Publish until JetStream acknowledges (same Nats-Msg-Id each time: a copy stored by an
    attempt whose PubAck was lost is dropped by the stream's duplicate window)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            await js.publish(subject, data, timeout=2, headers={"Nats-Msg-Id": msg_id})
            return True
        except RETRIABLE:
            sent.publish_retries += 1
            if sent.first_error_at is None:
                sent.first_error_at = time.monotonic()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


def authorize_request(request_id: str, account: str, ttl_s: int = HOLD_TTL_S) -> bytes:
    return json.dumps({"request_id": request_id, "account_id": account, "product": "sms",
                       "quantity": 1, "ttl_seconds": ttl_s}).encode()


async def authorize(nc: NATS, payload: bytes, sent: Sent,
                    deadline_s: float = AUTHORIZE_DEADLINE_S) -> dict[str, Any] | None:
    """Ask until answered; the same request_id gets the same reply, so asking again after a
    lost reply places no second hold."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            msg = await nc.request(LEDGER_AUTHORIZE, payload, timeout=2)
            return dict(json.loads(msg.data))
        except RETRIABLE:
            sent.authorize_retries += 1
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)


async def send_malformed(js: Any, sent: Sent) -> None:
    """A few usage messages the ledger must dead-letter, each with a Nats-Msg-Id to find its
    dead letter by."""
    for number, data in enumerate(MALFORMED):
        msg_id = f"{sent.label}-malformed-{number}"
        assert await publish_acknowledged(js, USAGE_RECORDED, data, msg_id, sent)
        sent.malformed.append(msg_id)


async def connect(nats_url: str) -> NATS:
    return await nats.connect([u for u in nats_url.split(",") if u], max_reconnect_attempts=-1,
                              reconnect_time_wait=0.2, connect_timeout=2)


async def close(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
