"""Bodies of sync_service: how synchronisation with each external system is doing."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.timestamps import Timestamp

SYNC_TARGETS_MAX: Final = 16

SyncTarget = Literal["xero", "hubspot"]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class TargetStatus(Struct, frozen=True, kw_only=True):
    target: SyncTarget
    connected: Annotated[bool, Meta(description="Credentials present and accepted")]
    last_success_at: Timestamp | None
    backlog: Annotated[Count, Meta(description="Changes waiting to be pushed")]
    failures: Annotated[Count, Meta(description="Changes failing and being retried")]
    dead_letters: Annotated[Count, Meta(description="Changes given up on, to re-drive")]
    last_error: Annotated[str, Meta(max_length=500)] | None = None


class SyncStatus(Struct, frozen=True, kw_only=True):
    """GET /v1/sync/status."""

    targets: Annotated[list[TargetStatus], Meta(max_length=SYNC_TARGETS_MAX)]
    as_of: Timestamp
