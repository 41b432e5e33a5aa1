"""event_codec: CPU per event of the ledger's mapper, encoding (to_stored_event) and decoding
(to_domain_event), the work intake does per stored event and a load, catch-up or verify does per
event read back. No database, no NATS: ``python -m bench.event_codec [--rounds N]``.

Events are made by the domain as intake and the operator commands make them: a usage event
with 1 line and with 50 lines (intake stores one event per account per batch), a hold, a
refund, an account opening. Each figure is the best of five rounds of thread CPU time divided
by the events done (best, not mean: the machine is shared and other work only adds time).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent

from ledger_service.app.ledger import LedgerApplication
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.values import DebitRef, UsageLine

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
POUND = 1_000_000
PRICE = 39_500
ROUNDS = 5


def sample_events() -> dict[str, Any]:
    account = BillingAccount.open(uuid4(), T0, account_type="prepay")
    account.grant("promo", "bonus", 5 * POUND, T0, expires_at=T0 + timedelta(days=30))
    account.purchase_credit("pay-1", "stripe", 100 * POUND, "GBP", T0, reference="cs_1")
    account.authorize("h1", "r1", "sms", 3, PRICE, T0 + timedelta(minutes=5), T0)
    account.record_usage([UsageLine("e1", "sms", 3, PRICE, "submitted", T0, hold_id="h1",
                                    reference="campaign-1")], T0)
    account.record_usage([UsageLine(f"b{i}", "sms", 3, PRICE, "submitted", T0,
                                    reference="campaign-1") for i in range(50)], T0)
    events: list[Any] = list(account.collect_events())
    by_name: dict[str, Any] = {}
    for event in events:
        name = type(event).__name__
        if name == "UsageRecorded":
            name = f"UsageRecorded/{len(event.lines)}"
        by_name.setdefault(name, event)
    line = by_name["UsageRecorded/50"].lines[0]
    account.refund("rf1", DebitRef.from_usage_line(line), None, "carrier fault", "ops", T0)
    by_name["Refunded"] = next(e for e in account.collect_events()
                              if type(e).__name__ == "Refunded")
    return {k: by_name[k] for k in ("Opened", "HoldPlaced", "Refunded", "UsageRecorded/1",
                                    "UsageRecorded/50")}


def cpu_us_per_call(fn: Callable[[], Any], calls: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, time.thread_time() - started)
    return best / calls * 1e6


def run(rounds_calls: int) -> dict[str, Any]:
    app = LedgerApplication(env={"MAPPER_TOPIC": "ledger_service.projections.decoding:FastMapper"})
    try:
        mapper = app.mapper
        figures: dict[str, Any] = {}
        for name, event in sample_events().items():
            stored = mapper.to_stored_event(event)
            copy = StoredEvent(stored.originator_id, stored.originator_version, stored.topic,
                               bytes(stored.state))
            calls = max(20, rounds_calls // (10 if name.endswith("/50") else 1))
            figures[name] = {
                "state_bytes": len(stored.state),
                "encode_us": round(cpu_us_per_call(partial(mapper.to_stored_event, event),
                                                   calls), 2),
                "decode_us": round(cpu_us_per_call(partial(mapper.to_domain_event, copy),
                                                   calls), 2),
            }
        if getattr(BillingAccount.Opened, "class_version", 1) > 1:
            # an Opened stored at class version 1 (no actor), upcast as it is decoded
            opened = mapper.to_stored_event(sample_events()["Opened"])
            state = json.loads(opened.state)
            del state["actor"], state["class_version"]
            old = StoredEvent(opened.originator_id, opened.originator_version, opened.topic,
                              json.dumps(state, separators=(",", ":")).encode())
            figures["Opened v1 (upcast)"] = {
                "state_bytes": len(old.state),
                "decode_us": round(cpu_us_per_call(partial(mapper.to_domain_event, old),
                                                   rounds_calls), 2),
            }
        return figures
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    args = parser.parse_args()
    figures = run(args.calls)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
