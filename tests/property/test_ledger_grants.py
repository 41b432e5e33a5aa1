"""Properties of the pure grant functions: consumption conserves money, and a debit refunded
in pieces is split exactly as if refunded at once."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger_service.domain.grants import GRANT_KINDS, Spender, allocate_refund

EXPIRIES = [None, "2026-02-21T00:00:00.000000Z", "2026-03-01T00:00:00.000000Z"]

grant_states = st.dictionaries(
    keys=st.text("abcdefgh", min_size=1, max_size=3),
    values=st.builds(
        lambda kind, remaining, expires_at, seq: {
            "kind": kind, "remaining_micros": remaining, "expires_at": expires_at, "seq": seq},
        st.sampled_from(GRANT_KINDS), st.integers(1, 10_000), st.sampled_from(EXPIRIES),
        st.integers(0, 100)),
    max_size=6,
)


@given(grants=grant_states, amounts=st.lists(st.integers(0, 20_000), max_size=5))
def test_spending_takes_exactly_the_amount_from_grants_or_overdraft(
        grants: dict[str, Any], amounts: list[int]) -> None:
    spender = Spender(grants, lambda kind: True)
    taken: dict[str, int] = {}
    for amount in amounts:
        consumed, overdraft = spender.take(amount)
        assert overdraft >= 0
        assert sum(c["amount_micros"] for c in consumed) + overdraft == amount
        for c in consumed:
            assert c["amount_micros"] > 0
            taken[c["grant_id"]] = taken.get(c["grant_id"], 0) + c["amount_micros"]
    for grant_id, total in taken.items():
        assert total <= grants[grant_id]["remaining_micros"]
    assert all(g["remaining_micros"] > 0 for g in grants.values()), "state left untouched"


@given(parts=st.lists(st.integers(1, 1_000), max_size=4), overdraft=st.integers(0, 1_000),
       data=st.data())
def test_refunding_in_pieces_splits_like_refunding_at_once(
        parts: list[int], overdraft: int, data: st.DataObject) -> None:
    consumed = [{"grant_id": f"g{i}", "kind": "bonus", "expires_at": None, "amount_micros": p}
                for i, p in enumerate(parts)]
    total = sum(parts) + overdraft
    if total == 0:
        return
    pieces = data.draw(st.lists(st.integers(1, total), max_size=4))
    already = 0
    shares: dict[str, int] = {}
    for piece in pieces:
        piece = min(piece, total - already)
        if piece == 0:
            break
        overdraft_share, grant_shares = allocate_refund(consumed, overdraft, already, piece)
        assert overdraft_share + sum(s for _, s in grant_shares) == piece
        shares["overdraft"] = shares.get("overdraft", 0) + overdraft_share
        for part, share in grant_shares:
            shares[part["grant_id"]] = shares.get(part["grant_id"], 0) + share
        already += piece
    at_once_overdraft, at_once = allocate_refund(consumed, overdraft, 0, already)
    expected = {"overdraft": at_once_overdraft} | {p["grant_id"]: s for p, s in at_once}
    assert {k: v for k, v in shares.items() if v} == {k: v for k, v in expected.items() if v}
