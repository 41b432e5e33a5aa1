"""Bodies of sync_service: how synchronisation with each external system is doing."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.timestamps import Timestamp

SYNC_TARGETS_MAX: Final = 16

SYNC_CONNECTIONS_MAX: Final = 1_000
DEAD_LETTERS_PAGE_MAX: Final = 500

SyncTarget = Literal["xero", "hubspot"]
ConnectionState = Literal["active", "broken", "disconnected"]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class ConnectionStatus(Struct, frozen=True, kw_only=True):
    """One organisation (Xero tenant) of a target."""

    connection_id: Annotated[str, Meta(description="Xero's tenantId")]
    name: str
    state: ConnectionState
    is_default: Annotated[bool, Meta(description="Accounts without a mapping sync here")]
    connected: Annotated[bool, Meta(description="Active, with credentials Xero accepts")]
    last_success_at: Timestamp | None
    backlog: Count
    failures: Count
    dead_letters: Count
    last_error: Annotated[str, Meta(max_length=500)] | None = None
    owner: Annotated[str | None, Meta(
        description="The sync process draining it now (host:pid:id), while it has work")] = None


class TargetStatus(Struct, frozen=True, kw_only=True):
    target: SyncTarget
    connected: Annotated[bool, Meta(description="Credentials present and accepted")]
    last_success_at: Timestamp | None
    backlog: Annotated[Count, Meta(description="Changes waiting to be pushed")]
    failures: Annotated[Count, Meta(description="Changes failing and being retried")]
    dead_letters: Annotated[Count, Meta(description="Changes given up on, to re-drive")]
    last_error: Annotated[str, Meta(max_length=500)] | None = None
    connections: Annotated[
        list[ConnectionStatus], Meta(max_length=SYNC_CONNECTIONS_MAX)
    ] = []
    unassigned: Annotated[
        Count, Meta(description="Changes waiting for any connection to exist")
    ] = 0


class SyncStatus(Struct, frozen=True, kw_only=True):
    """GET /v1/sync/status."""

    targets: Annotated[list[TargetStatus], Meta(max_length=SYNC_TARGETS_MAX)]
    as_of: Timestamp


class DeadLetterView(Struct, frozen=True, kw_only=True):
    """A change given up on: GET /v1/sync/dead-letters."""

    dead_letter_id: int
    target: SyncTarget
    connection_id: str | None
    kind: str
    subject_id: Annotated[str, Meta(description="Our invoice, credit note or payment id")]
    attempts: Count
    failures: Count
    last_error: Annotated[str, Meta(max_length=500)] | None
    updated_at: Timestamp


class DeadLettersPage(Struct, frozen=True, kw_only=True):
    dead_letters: Annotated[list[DeadLetterView], Meta(max_length=DEAD_LETTERS_PAGE_MAX)]


class RetryAccepted(Struct, frozen=True, kw_only=True):
    """POST /v1/sync/dead-letters/{id}/retry."""

    dead_letter_id: int
    requeued: bool
