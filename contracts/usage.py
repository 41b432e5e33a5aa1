"""usage.v1.recorded: what internal services report they have sent or served."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.ids import AccountId, HoldId, Key, ProductKey, Reference
from contracts.timestamps import Timestamp

# A billion units in one record is beyond any single campaign; the bound keeps
# quantity * unit price (in micros) far inside a signed 64-bit integer.
QUANTITY_MAX: Final = 10**9

Quantity = Annotated[
    int, Meta(gt=0, le=QUANTITY_MAX, description="Units: message segments, numbers or requests")
]

UsageStatus = Literal["submitted", "delivered", "failed"]


class UsageRecorded(Struct, frozen=True, kw_only=True):
    """Usage of a product by an account. Nats-Msg-Id: `event_id`.

    Which status bills depends on the account's billing basis; `failed` never bills.
    """

    event_id: Annotated[Key, Meta(description="Idempotency key, unique per producer")]
    account_id: AccountId
    product: ProductKey
    quantity: Quantity
    occurred_at: Annotated[Timestamp, Meta(description="When the usage happened")]
    status: UsageStatus
    hold_id: Annotated[HoldId | None, Meta(description="Captures this authorization")] = None
    reference: Annotated[
        Reference | None, Meta(description="The producer's message or campaign id")
    ] = None
