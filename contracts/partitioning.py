"""Which partition an account belongs to: the one function every process (and NATS) agrees on.

The ledger is split into a fixed number of partitions per deployment (LEDGER_PARTITIONS,
default 16); each ledger process owns a disjoint set of them (docs/scaling.md). The partition
of an account is the FNV-1a 32-bit hash of the bytes of its id, as written in subjects (the
canonical lower-case UUID string), modulo the count: the same function as nats-server's
`{{partition(N,1)}}` subject-mapping function (server/subject_transform.go,
getHashPartition), so a server-side mapping and this code put an account in the same place.

Publishers may import this to publish straight to a partition's subject
(`usage_partition_subject`), which saves the ledger's forwarding hop; they must then use the
deployment's LEDGER_PARTITIONS.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

PARTITIONS_DEFAULT: Final = 16
PARTITIONS_MAX: Final = 1024

_FNV32_OFFSET: Final = 0x811C9DC5
_FNV32_PRIME: Final = 0x01000193
_MASK32: Final = 0xFFFFFFFF


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits (Go's hash/fnv New32a)."""
    h = _FNV32_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV32_PRIME) & _MASK32
    return h


def account_token(account_id: UUID | str) -> str:
    """The account as a subject token: the canonical UUID string (lower case, hyphens)."""
    return str(account_id) if isinstance(account_id, UUID) else str(UUID(account_id))


def partition_of(account_id: UUID | str, partitions: int) -> int:
    """The partition of `account_id` among `partitions` (0 .. partitions-1)."""
    if not 1 <= partitions <= PARTITIONS_MAX:
        raise ValueError(f"partitions must be 1..{PARTITIONS_MAX}, not {partitions}")
    return fnv1a_32(account_token(account_id).encode("ascii")) % partitions
