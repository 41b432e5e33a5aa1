"""Identifier types shared by every message and HTTP body."""

from __future__ import annotations

from typing import Annotated, Final
from uuid import UUID

import msgspec

from contracts.text import text_meta

KEY_LENGTH_MAX: Final = 128
# `$(?!\n)`: Python's `$` alone also accepts a trailing newline; see contracts.money.
KEY_PATTERN: Final = r"^[\x21-\x7e]+$(?!\n)"

# Opaque keys (usage event ids, idempotency keys, request ids): 1-128 visible ASCII
# characters. Whitespace is excluded so that a key copied from a log line is the key.
Key = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=KEY_LENGTH_MAX,
        pattern=KEY_PATTERN,
        description="Opaque key: 1-128 visible ASCII characters",
        examples=["msg-2026-11-22-000001"],
    ),
]

AccountId = Annotated[UUID, msgspec.Meta(description="Billing account id (UUID)")]

Reference = Annotated[
    str, text_meta(max_length=256, description="A caller's free-form reference")
]


def _key_meta(description: str, example: str) -> msgspec.Meta:
    """Constraints of a Key with the description of what it identifies."""
    return msgspec.Meta(
        min_length=1,
        max_length=KEY_LENGTH_MAX,
        pattern=KEY_PATTERN,
        description=description,
        examples=[example],
    )


# Ids minted by our services. They are opaque Keys rather than UUIDs so that a provider's id
# (Stripe "cs_...", Xero invoice ids) can be used where it is the natural key.
EventId = Annotated[
    str,
    _key_meta(
        "Idempotency key of the event, unique within its stream; publishers set the "
        "Nats-Msg-Id header to it",
        "evt-01JD5X8S8N6Q6Z5B3W3R1K2M4P",
    ),
]
HoldId = Annotated[str, _key_meta("Id of a hold placed by ledger.v1.authorize", "hold-8c1e")]
EntryId = Annotated[str, _key_meta("Id of a ledger entry", "ent-5f3a9c")]
# A grant id is minted from the write that made it: "grant:" or "adjustment:" and the
# caller's Idempotency-Key (up to KEY_LENGTH_MAX), so it may be that much longer than a key.
GRANT_ID_LENGTH_MAX: Final = KEY_LENGTH_MAX + len("adjustment:")
GrantId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=GRANT_ID_LENGTH_MAX, pattern=KEY_PATTERN,
    description="Id of a credit grant", examples=["grant-71b2"])]
PaymentId = Annotated[str, _key_meta("Id of a payment", "pay-3d9e")]
RefundId = Annotated[str, _key_meta("Id of a payment refund", "re-4411")]
InvoiceId = Annotated[str, _key_meta("Id of an invoice", "inv-2a07")]
CreditNoteId = Annotated[str, _key_meta("Id of a credit note", "cn-0b5c")]
BillingRunId = Annotated[str, _key_meta("Id of a billing run", "run-2026-10")]
DeadLetterId = Annotated[str, _key_meta("Id of a dead letter", "dl-9f0e")]

ProductKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$(?!\n)",
        description="Catalogue product key: lower-case letters, digits and underscores",
        examples=["sms", "rcs_basic", "shortcode_keyword"],
    ),
]
Sku = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=KEY_LENGTH_MAX,
        pattern=KEY_PATTERN,
        description="Stock keeping unit of the product in the CRM (HubSpot)",
        examples=["SMS-UK-001"],
    ),
]
