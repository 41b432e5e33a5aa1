"""The partition function (FNV-1a 32 as nats-server's partition(N, 1)) and lease arithmetic."""

from __future__ import annotations

import uuid
from collections import Counter
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import subjects
from contracts.partitioning import PARTITIONS_DEFAULT, account_token, fnv1a_32, partition_of
from ledger_service.partitions import fair_share, surplus


@pytest.mark.parametrize(("data", "digest"), [
    # The published FNV-1a 32-bit test vectors (Go's hash/fnv New32a gives the same).
    (b"", 0x811C9DC5),
    (b"a", 0xE40C292C),
    (b"foobar", 0xBF9CF968),
])
def test_fnv1a_32_matches_the_reference_vectors(data: bytes, digest: int) -> None:
    assert fnv1a_32(data) == digest


def test_partition_of_an_account_is_the_hash_of_its_uuid_string_mod_n() -> None:
    account = UUID("7f1c2a3e-9b4d-4e5f-8a6b-1c2d3e4f5a6b")
    assert partition_of(account, 16) == fnv1a_32(str(account).encode()) % 16
    # The same account written any way gives the same partition: the canonical token.
    assert partition_of(str(account).upper(), 16) == partition_of(account, 16)
    assert account_token(str(account).upper()) == str(account)
    assert partition_of(account, 1) == 0


def test_known_partitions_stay_fixed() -> None:
    # Frozen: changing the function would move every account of a running deployment.
    # tests/integration/test_ledger_partitions.py checks the same against nats-server's own
    # {{partition(16,1)}} mapping.
    assert [partition_of(i, 16) for i in KNOWN_IDS] == [1, 1, 15]


KNOWN_IDS = ["00000000-0000-0000-0000-000000000000", "11111111-1111-1111-1111-111111111111",
             "7f1c2a3e-9b4d-4e5f-8a6b-1c2d3e4f5a6b"]


def test_partitions_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        partition_of("00000000-0000-0000-0000-000000000000", 0)


def test_accounts_spread_over_the_partitions() -> None:
    counts = Counter(partition_of(uuid.uuid4(), PARTITIONS_DEFAULT) for _ in range(16_000))
    assert set(counts) == set(range(PARTITIONS_DEFAULT))
    assert min(counts.values()) > 700  # about 1,000 each


@given(partitions=st.integers(1, 64), members=st.integers(1, 64))
def test_fair_shares_cover_every_partition(partitions: int, members: int) -> None:
    share = fair_share(partitions, members)
    assert share * members >= partitions  # nobody is left without an owner
    assert (share - 1) * members < partitions  # and no share is bigger than needed


@given(owned=st.sets(st.integers(0, 63)), share=st.integers(0, 64))
def test_surplus_brings_a_member_down_to_its_share(owned: set[int], share: int) -> None:
    given_up = surplus(owned, share)
    assert set(given_up) <= owned
    assert len(owned) - len(given_up) == min(len(owned), share)


def test_partitioned_subjects() -> None:
    account = "7f1c2a3e-9b4d-4e5f-8a6b-1c2d3e4f5a6b"
    assert subjects.by_account(subjects.USAGE_RECORDED, account) == f"usage.v1.recorded.{account}"
    assert subjects.by_account(subjects.LEDGER_AUTHORIZE, account) == (
        f"ledger.v1.authorize.{account}")
    assert subjects.usage_partition_subject(3, account) == f"usage.v1.part.3.{account}"
    assert subjects.usage_partition_filter(3) == "usage.v1.part.3.*"
    assert subjects.authorize_partition_subject(3) == "ledger.v1.authorize.part.3"
    # Every usage subject is in the USAGE stream; the authorize ones in no stream (a stream
    # would answer the request with a PubAck).
    for subject in (f"usage.v1.recorded.{account}", f"usage.v1.part.3.{account}"):
        assert subjects.stream_of(subject) == "USAGE"
    for subject in (f"ledger.v1.authorize.{account}", "ledger.v1.authorize.part.3"):
        assert subjects.stream_of(subject) is None
    # The legacy durable's filter does not take the new subjects, nor the by-account one the
    # partition subjects.
    assert not subjects.subject_matches("usage.v1.recorded", f"usage.v1.recorded.{account}")
    assert not subjects.subject_matches("usage.v1.recorded.*", f"usage.v1.part.3.{account}")
    assert not subjects.subject_matches("ledger.v1.authorize.*", "ledger.v1.authorize.part.3")
