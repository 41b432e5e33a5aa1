"""Statement entries: what one stored ledger event contributes to an account's statement.

The one place that decides which events are entries, their kind, their signed amount and
their text. The statement projection, the verifier's replay and the publisher of
`ledger.v1.events.entry_posted` all read entries from here, so a statement line and the
message announcing it can never disagree.

Entries are the events that change the balance: top-ups, grants, refunds, adjustments,
payment reversals, grant expiries, fees, and each billed usage line (one UsageRecorded event
holds a batch of lines, each its own entry) and each fee of a batch (FeesCharged: one event per
account per batch of fees, each line the entry a FeeCharged event of that fee would make).
Holds move money between available and held without changing the balance, and a failed
message's released hold bills nothing: neither is an entry.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final, NamedTuple

from contracts.money import format_micros
from ledger_service.domain.naming import event_name
from ledger_service.domain.times import format_time

# Event class name -> entry kind (contracts.ledger.EntryKind); usage lines are "usage", and a
# CreditPurchased with purpose "invoice" is an "invoice_payment".
ENTRY_KINDS: Final = {
    "CreditPurchased": "topup",
    "CreditGranted": "grant",
    "Refunded": "refund",
    "Adjusted": "adjustment",
    "PaymentReversed": "payment_refund",
    "GrantsExpired": "grant_expiry",
    "FeeCharged": "fee",
}
DESCRIPTION_LENGTH_MAX: Final = 500
# An event's entries are ordered by line; a usage event holds at most 5,000 lines
# (USAGE_LINES_PER_COMMAND_MAX), so 2**13 line slots per event position never collide.
LINE_BITS: Final = 13
LINES_PER_EVENT_MAX: Final = 1 << LINE_BITS
# Usage descriptions repeat (a product, a quantity, a price): remembered, not re-formatted.
USAGE_DESCRIPTIONS_CACHED_MAX: Final = 4_096


class StatementEntry(NamedTuple):
    # A named tuple, not a frozen dataclass: as immutable, and built in a third of the time
    # (catch-up builds one per usage line).
    entry_id: str
    line: int  # 0 for a whole event; the line's index in a usage event
    kind: str
    amount_micros: int  # signed: positive credits the account, negative debits it
    balance_after_micros: int
    currency: str | None  # None only for a zero-amount entry, which has no postings
    occurred_at: str  # fixed-width UTC text (domain/times.py), as stored
    description: str
    reference: str | None
    actor: str | None
    product: str | None = None
    quantity: int | None = None
    unit_price_micros: int | None = None
    hold_id: str | None = None
    grant_id: str | None = None


def entry_seq(position: int, line: int) -> int:
    """Statement order of an entry: the event's place in the log, then the line in it."""
    if not 0 <= line < LINES_PER_EVENT_MAX:
        raise ValueError(f"line {line} outside 0..{LINES_PER_EVENT_MAX - 1}")
    return (position << LINE_BITS) | line


def signed_amount_micros(event: Any) -> int:
    """The amount of a non-usage entry as the account sees it (debits negative): what it
    changed the balance by, so that each entry's balance_after is the previous one's plus its
    amount."""
    name = event_name(type(event))
    if name == "Refunded":
        # A part restored to a grant already past its expiry expires at once (booked to the
        # expiry account): the customer gets the rest.
        return int(event.amount_micros) - _expired_at_once(event)
    if name == "PaymentReversed":
        return -int(event.amount_micros)
    if name == "GrantsExpired":
        return -sum(int(g["amount_micros"]) for g in event.grants)
    if name == "Adjusted" and event.direction == "debit":
        return -int(event.amount_micros)
    if name == "FeeCharged":
        return -int(event.amount_micros)
    return int(event.amount_micros)


def statement_entries(event: Any) -> list[StatementEntry]:
    """The entries one decoded ledger event contributes, in statement order."""
    name = event_name(type(event))
    if name == "UsageRecorded":
        return [_usage_entry(index, line) for index, line in enumerate(event.lines)
                if line["amount_micros"] != 0]
    if name == "FeesCharged":
        occurred_at = format_time(event.timestamp)
        return [_fee_line_entry(index, line, occurred_at)
                for index, line in enumerate(event.lines)]
    kind = ENTRY_KINDS.get(name)
    if kind is None:
        return []
    if name == "CreditPurchased" and getattr(event, "purpose", "topup") == "invoice":
        kind = "invoice_payment"
    if name == "FeeCharged":
        return [_fee_entry(event)]
    return [StatementEntry(
        entry_id=event.entry_id, line=0, kind=kind, amount_micros=signed_amount_micros(event),
        balance_after_micros=int(event.balance_after_micros),
        currency=_currency(event.postings), occurred_at=format_time(event.timestamp),
        description=_clip(_describe(name, event)), reference=getattr(event, "reference", None),
        actor=_actor(name, event), grant_id=getattr(event, "grant_id", None),
    )]


def _fee_entry(event: Any) -> StatementEntry:
    return StatementEntry(
        entry_id=event.entry_id, line=0, kind="fee", amount_micros=-int(event.amount_micros),
        balance_after_micros=int(event.balance_after_micros),
        currency=_currency(event.postings), occurred_at=format_time(event.timestamp),
        description=_clip(event.description or _fee_description(event)),
        reference=event.reference, actor="system", product=event.product,
        quantity=event.quantity, unit_price_micros=event.unit_price_micros,
    )


def _fee_line_entry(index: int, line: dict[str, Any], occurred_at: str) -> StatementEntry:
    """One fee of a FeesCharged event: the entry a FeeCharged event of that fee makes, at
    its line of the event."""
    return StatementEntry(
        entry_id=line["entry_id"], line=index, kind="fee",
        amount_micros=-int(line["amount_micros"]),
        balance_after_micros=int(line["balance_after_micros"]),
        currency=_currency(line["postings"]), occurred_at=occurred_at,
        description=_clip(line["description"] or _describe_fee(
            line["product"], line["quantity"], line["unit_price_micros"], line["period"],
            line["days"], line["days_in_period"])),
        reference=line["reference"], actor="system", product=line["product"],
        quantity=line["quantity"], unit_price_micros=line["unit_price_micros"],
    )


def _fee_description(event: Any) -> str:
    return _describe_fee(event.product, event.quantity, event.unit_price_micros, event.period,
                         event.days, event.days_in_period)


def _describe_fee(product: str, quantity: int, unit_price_micros: int, period: str | None,
                  days: int | None, days_in_period: int | None) -> str:
    text = f"{product} x {quantity} at {format_micros(unit_price_micros)}"
    if period:
        text += f" for {period}"
    if days is not None:
        text += f" ({days}/{days_in_period} days)"
    return text


def _usage_entry(index: int, line: dict[str, Any]) -> StatementEntry:
    postings = line["postings"]
    return StatementEntry(
        entry_id=line["entry_id"], line=index, kind="usage",
        amount_micros=-int(line["amount_micros"]),
        balance_after_micros=int(line["balance_after_micros"]),
        currency=str(postings[0]["currency"]) if postings else None,
        occurred_at=line["occurred_at"],
        description=_usage_description(line["product"], line["quantity"],
                                       line["unit_price_micros"]),
        reference=line.get("reference"), actor=None, product=line["product"],
        quantity=line["quantity"], unit_price_micros=line["unit_price_micros"],
        hold_id=line.get("hold_id"),
    )


@lru_cache(maxsize=USAGE_DESCRIPTIONS_CACHED_MAX)
def _usage_description(product: str, quantity: int, unit_price_micros: int) -> str:
    return _clip(f"{product} x {quantity} at {format_micros(unit_price_micros)}")


def _expired_at_once(refund: Any) -> int:
    return sum(int(r["amount_micros"]) for r in refund.restorations if r["effect"] == "expired")


def _currency(postings: list[dict[str, Any]]) -> str | None:
    return str(postings[0]["currency"]) if postings else None


def _describe(name: str, event: Any) -> str:
    if name == "CreditPurchased":
        what = "Invoice payment" if getattr(event, "purpose", "topup") == "invoice" else "Top-up"
        return f"{what} via {event.provider} (payment {event.payment_id})"
    if name == "CreditGranted":
        text = f"Credit granted ({event.kind})"
        if event.expires_at:
            text += f", expires {event.expires_at[:10]}"
        return text + (f": {event.reason}" if event.reason else "")
    if name == "Refunded":
        text = f"Refund of entry {event.refunded_entry_id}"
        expired = _expired_at_once(event)
        if expired:
            text += (f" ({format_micros(event.amount_micros)}, of which"
                     f" {format_micros(expired)} expired at once)")
        return text + (f": {event.reason}" if event.reason else "")
    if name == "Adjusted":
        return f"Adjustment ({event.direction}): {event.memo}"
    if name == "PaymentReversed":
        return f"Payment {event.payment_id} refunded via {event.provider}" + (
            f": {event.reason}" if event.reason else "")
    if event.reason == "trial_converted":
        return "Promotional credit removed on conversion from trial"
    kinds = sorted({g["kind"] for g in event.grants})
    return f"Credit expired: {', '.join(kinds)}"


def _actor(name: str, event: Any) -> str | None:
    if name in ("CreditPurchased", "PaymentReversed"):
        return str(event.provider)
    if name == "GrantsExpired":
        return "system"
    return getattr(event, "actor", None) or None


def _clip(text: str) -> str:
    return text if len(text) <= DESCRIPTION_LENGTH_MAX else text[:DESCRIPTION_LENGTH_MAX - 1] + "…"
