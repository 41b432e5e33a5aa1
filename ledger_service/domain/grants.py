"""Credit grants: which credit a debit spends, and where a refund puts it back.

Pure functions over the aggregate's grant state, which is a dict
`grant_id -> {"kind", "remaining_micros", "expires_at", "seq"}` of JSON primitives (so a
snapshot needs no custom transcoding). Only grants with something remaining are in state; a
consumption record carries the grant's kind and expiry, so a refund can re-create a grant that
was used up and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from ledger_service.domain.payloads import GrantKind, GrantUse, Restoration, RestorationEffect
from ledger_service.domain.postings import (
    ADJUSTMENTS,
    EXPENSE_PROMOTION,
    REVENUE_BREAKAGE,
)

GrantState = dict[str, Any]
Consumed = GrantUse

# Free credit: spent before paid credit, and the only credit a trial account may spend.
PROMOTIONAL_KINDS: Final[tuple[GrantKind, ...]] = ("signup_promo", "mobile_verification", "referral", "bonus",
                            "compensation")
# The seed's AccountObserver expires exactly these when a trial converts; bonus and
# compensation are deliberate operator gifts with their own expiry and survive conversion.
TRIAL_PROMO_KINDS: Final[tuple[GrantKind, ...]] = ("signup_promo", "mobile_verification", "referral")
# `adjustment` comes from an operator's credit adjustment, `refund` from refunding an overdraft
# whose deficit was already settled; both are spent with purchased credit, last.
PAID_KINDS: Final[tuple[GrantKind, ...]] = ("purchased", "adjustment", "refund")
GRANT_KINDS: Final = PROMOTIONAL_KINDS + PAID_KINDS
# Kinds an operator or a payment may grant directly (CONTRACTS: POST /credits).
GRANTABLE_KINDS: Final[tuple[GrantKind, ...]] = (*PROMOTIONAL_KINDS, "purchased")
# Trial accounts spend promotional credit only: purchased credit waits for the conversion.
TRIAL_LOCKED_KINDS: Final[tuple[GrantKind, ...]] = ("purchased",)


def is_promotional(kind: str) -> bool:
    return kind in PROMOTIONAL_KINDS


def expiry_account(kind: str) -> str:
    """Where the value of a grant goes when it expires unspent: back to whoever funded it."""
    if kind in PROMOTIONAL_KINDS:
        return EXPENSE_PROMOTION
    if kind == "adjustment":
        return ADJUSTMENTS
    return REVENUE_BREAKAGE


def spendable_for(account_type: str) -> Callable[[str], bool]:
    if account_type == "trial":
        return lambda kind: kind not in TRIAL_LOCKED_KINDS
    return lambda kind: True


def consumption_key(item: tuple[str, GrantState]) -> tuple[int, bool, str, int]:
    """Promotional first, soonest expiry first, no expiry last, then creation order."""
    _, grant = item
    expires_at = grant["expires_at"]
    return (0 if is_promotional(grant["kind"]) else 1, expires_at is None, expires_at or "",
            grant["seq"])


def in_consumption_order(grants: Mapping[str, GrantState]) -> list[tuple[str, GrantState]]:
    return sorted(grants.items(), key=consumption_key)


def due_for_expiry(grants: Mapping[str, GrantState], now_text: str) -> list[tuple[str, GrantState]]:
    return [(gid, g) for gid, g in grants.items()
            if g["expires_at"] is not None and g["expires_at"] <= now_text]


class Spender:
    """Takes debits off a working copy of the grants, in consumption order.

    Built once per command so that a batch of usage lines walks the sorted grants once; the
    aggregate's state is not touched until the event that records the consumption is applied.
    """

    __slots__ = ("_index", "_queue")

    def __init__(
        self,
        grants: Mapping[str, GrantState],
        accept: Callable[[str], bool],
        first: str | None = None,
    ) -> None:
        ordered = in_consumption_order(grants)
        if first is not None and first in grants:
            ordered = [(first, grants[first])] + [(g, s) for g, s in ordered if g != first]
        self._queue: list[list[Any]] = [
            [gid, g["kind"], g["expires_at"], g["remaining_micros"]]
            for gid, g in ordered
            if g["remaining_micros"] > 0 and (gid == first or accept(g["kind"]))
        ]
        self._index = 0

    def take(self, amount_micros: int) -> tuple[list[Consumed], int]:
        """Consume up to amount_micros; return the consumption and the uncovered overdraft."""
        consumed: list[Consumed] = []
        rest = amount_micros
        while rest > 0 and self._index < len(self._queue):
            entry = self._queue[self._index]
            part = min(rest, entry[3])
            entry[3] -= part
            rest -= part
            consumed.append({"grant_id": entry[0], "kind": entry[1], "expires_at": entry[2],
                             "amount_micros": part})
            if entry[3] == 0:
                self._index += 1
        return consumed, rest


def allocate_refund(
    consumed: Sequence[GrantUse],
    overdraft_micros: int,
    already_refunded_micros: int,
    amount_micros: int,
) -> tuple[int, list[tuple[GrantUse, int]]]:
    """Split a refund over the parts of the original debit, last consumed first.

    The overdraft part was taken last, so it is given back first; then the grants in reverse
    consumption order. Earlier refunds of the same entry already took the first
    `already_refunded_micros` of that order.
    """

    def parts() -> Iterator[tuple[GrantUse | None, int]]:
        yield None, overdraft_micros
        for part in reversed(consumed):
            yield part, part["amount_micros"]

    skip, want = already_refunded_micros, amount_micros
    overdraft_share = 0
    shares: list[tuple[GrantUse, int]] = []
    for part, size in parts():
        skipped = min(skip, size)
        skip -= skipped
        share = min(want, size - skipped)
        want -= share
        if share:
            if part is None:
                overdraft_share = share
            else:
                shares.append((part, share))
    return overdraft_share, shares


def plan_restoration(
    grants: Mapping[str, GrantState],
    deficit_micros: int,
    overdraft_share_micros: int,
    grant_shares: Sequence[tuple[GrantUse, int]],
    now_text: str,
    refund_grant_id: str,
) -> list[Restoration]:
    """Where each part of a refund goes, as restoration records for the Refunded event.

    Every part credited back to the customer first covers an outstanding deficit (as any
    credit does), and the rest goes to:
    - the overdraft part: a new grant of kind `refund` (the customer paid that deficit since);
    - a grant still in state: that grant ("restored");
    - a grant used up and dropped but not past its expiry: the same grant id, re-created;
    - a grant past its expiry: nothing; the part expires at once ("expired"), booked to the
      grant's expiry account, so a refund never revives credit that has run out.
    """
    deficit = deficit_micros
    restorations: list[Restoration] = []

    def cover(amount: int) -> int:
        nonlocal deficit
        covered = min(amount, deficit)
        deficit -= covered
        return covered

    if overdraft_share_micros:
        restorations.append({
            "grant_id": refund_grant_id, "kind": "refund", "expires_at": None,
            "amount_micros": overdraft_share_micros,
            "deficit_covered_micros": cover(overdraft_share_micros), "effect": "credited",
        })
    for part, share in grant_shares:
        grant_id, expires_at = part["grant_id"], part["expires_at"]
        effect: RestorationEffect
        if grant_id in grants:
            effect = "restored"
        elif expires_at is not None and expires_at <= now_text:
            effect = "expired"
        else:
            effect = "recreated"
        restorations.append({
            "grant_id": grant_id, "kind": part["kind"], "expires_at": expires_at,
            "amount_micros": share,
            "deficit_covered_micros": 0 if effect == "expired" else cover(share),
            "effect": effect,
        })
    return restorations
