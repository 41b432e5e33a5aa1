"""Double entry: ledger account names, postings, and the zero-sum rule.

A posting is a plain dict typed `payloads.Posting` (`{"ledger_account", "amount_micros",
"currency"}`) so that it survives the event store's JSON unchanged (see chain.py). The sign convention is the
customer's: a positive amount on `customer:{id}:available` is money the customer can spend; the
counter-posting on a system account is negative. A customer's balance is the sum of its
`available` and `held` accounts; for postpay accounts a negative balance is the receivable, so
no separate receivable account is needed.

System account names carry no currency: one customer's events are all in its currency, and
cross-account sums are taken per currency (`replay_postings_by_currency`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from uuid import UUID, uuid5

from ledger_service.domain.errors import InvalidRequest
from ledger_service.domain.payloads import Currency, Posting

REVENUE_USAGE: Final = "system:revenue:usage"
# Recurring and one-off fees: number and keyword rentals, their setup fees.
REVENUE_RECURRING: Final = "system:revenue:recurring"
# Purchased credit that expires unspent: income, not a cash movement.
REVENUE_BREAKAGE: Final = "system:revenue:breakage"
EXPENSE_PROMOTION: Final = "system:expense:promotion"
ADJUSTMENTS: Final = "system:adjustments"
# Credit granted by an operator as `purchased` without a provider payment (bank transfer,
# migration from the old system).
CASH_MANUAL: Final = "system:cash:manual"


def customer_available(account_id: UUID | str) -> str:
    return f"customer:{account_id}:available"


def customer_held(account_id: UUID | str) -> str:
    return f"customer:{account_id}:held"


def cash_account(provider: str) -> str:
    return f"system:cash:{provider}"


def posting(ledger_account: str, amount_micros: int, currency: Currency) -> Posting:
    return {"ledger_account": ledger_account, "amount_micros": amount_micros, "currency": currency}


def postings_of(legs: Iterable[tuple[str, int]], currency: Currency) -> list[Posting]:
    """Build postings from (account, amount) legs, merging legs on the same account.

    Zero legs are dropped: a posting of nothing is noise in a statement and in an audit.
    """
    merged: dict[str, int] = {}
    for ledger_account, amount_micros in legs:
        merged[ledger_account] = merged.get(ledger_account, 0) + amount_micros
    postings = [posting(acct, amount, currency) for acct, amount in merged.items() if amount]
    check_balanced(postings)
    return postings


class UnbalancedPostings(AssertionError):
    """A bug, never a user error: the model built postings that do not sum to zero."""


def check_balanced(postings: Sequence[Mapping[str, Any]]) -> None:
    for currency, total in sum_by_currency(postings).items():
        if total != 0:
            raise UnbalancedPostings(f"postings in {currency} sum to {total}, not 0")


def sum_by_currency(postings: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for p in postings:
        totals[p["currency"]] = totals.get(p["currency"], 0) + p["amount_micros"]
    return totals


def event_postings(event: Any) -> list[Mapping[str, Any]]:
    """All postings an event carries: its own and those of each of its lines."""
    found: list[Mapping[str, Any]] = list(getattr(event, "postings", None) or ())
    for line in getattr(event, "lines", None) or ():
        found.extend(line["postings"])
    return found


def replay_postings_by_currency(events: Iterable[Any]) -> dict[str, dict[str, int]]:
    """currency -> ledger account -> summed amount, over any events of any accounts."""
    sums: dict[str, dict[str, int]] = {}
    for event in events:
        for p in event_postings(event):
            per_account = sums.setdefault(p["currency"], {})
            acct = p["ledger_account"]
            per_account[acct] = per_account.get(acct, 0) + p["amount_micros"]
    return sums


def replay_postings(events: Iterable[Any]) -> dict[str, int]:
    """ledger account -> summed amount, for events in one currency (one account's stream).

    Raises InvalidRequest if the events mix currencies, since adding GBP to EUR on a shared
    system account would be a wrong number rather than an error.
    """
    by_currency = replay_postings_by_currency(events)
    if len(by_currency) > 1:
        raise InvalidRequest(f"events mix currencies {sorted(by_currency)}")
    return next(iter(by_currency.values()), {})


def customer_balance_micros(sums: Mapping[str, int], account_id: UUID | str) -> int:
    return sums.get(customer_available(account_id), 0) + sums.get(customer_held(account_id), 0)


def entry_id_for(account_id: UUID, kind: str, key: str) -> str:
    """Statement entry id of a non-usage money event.

    Usage lines use uuid5(account_id, event_id) as the contract asks. Other entries put a NUL
    before the kind: producer keys are printable ASCII, so no usage event id can collide with
    an entry id minted here.
    """
    return str(uuid5(account_id, f"\x00{kind}\x00{key}"))


def usage_entry_id(account_id: UUID, event_id: str) -> str:
    """str(uuid5(account_id, event_id)), computed without building UUID objects: intake
    mints one per usage line and the object construction was most of its cost."""
    digest = bytearray(hashlib.sha1(account_id.bytes + event_id.encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
