"""Anchors: the streaming Merkle root is RFC 6962's, and a signature binds every field."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ledger_service.anchors import (
    EMPTY_ROOT,
    merkle_root,
    public_key_of,
    sign_anchor,
    signature_holds,
)

SEED = b"s" * 32
OTHER_SEED = b"t" * 32


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it (recursive split)."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:split])
                          + reference_root(leaves[split:])).digest()


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=70))
def test_streaming_root_equals_rfc6962(leaves: list[bytes]) -> None:
    root, count = merkle_root(leaves)
    assert count == len(leaves)
    assert root == reference_root(leaves).hex()


def test_the_empty_tree_has_the_hash_of_nothing() -> None:
    assert merkle_root([]) == (EMPTY_ROOT, 0)


@given(st.integers(0, 10**9), st.integers(0, 10**6),
       st.sampled_from(["interval", "period_close", "manual"]))
def test_a_signature_binds_every_field(position: int, accounts: int, reason: str) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    anchor = sign_anchor(SEED, position=position, accounts=accounts, merkle_root_hex="ab" * 32,
                         reason=reason, period="2026-11", now=now)  # type: ignore[arg-type]
    trusted = public_key_of(SEED)
    assert signature_holds(anchor, trusted)
    for changed in ({"position": position + 1}, {"accounts": accounts + 1},
                    {"merkle_root": "cd" * 32}, {"period": "2026-10"},
                    {"created_at": now.replace(second=1)}):
        forged = anchor.__class__(**{**{f: getattr(anchor, f) for f in anchor.__struct_fields__},
                                     **changed})
        assert not signature_holds(forged, trusted), changed
    # A forger's own key signs, but not with the key the operator trusts.
    forged_key = sign_anchor(OTHER_SEED, position=position, accounts=accounts,
                             merkle_root_hex="ab" * 32, reason=reason,  # type: ignore[arg-type]
                             period="2026-11", now=now)
    assert not signature_holds(forged_key, trusted)
