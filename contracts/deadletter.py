"""The envelope of a message a consumer could not process.

It is published on `deadletter.v1.<original subject>` (contracts.subjects) so that it never
lands back in front of the consumer that gave up on it, and an operator can re-drive it.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.ids import DeadLetterId
from contracts.timestamps import Timestamp

# NATS' default max_payload: a dead letter can carry any message the server accepted.
PAYLOAD_LENGTH_MAX: Final = 1_048_576
# What a dead letter keeps of the payload, in bytes of its JSON string. A letter is one NATS
# message (max_payload, 1 MiB by default) and JSON spells a control byte in six bytes and an
# invalid one in three (U+FFFD), so a 200 KB message could make a 1.2 MB letter that NATS
# refused, and the message looped for ever. Past this the payload is cut, and the letter says
# so (`payload_truncated`) with the original's size and SHA-256.
PAYLOAD_KEPT_BYTES_MAX: Final = 256 * 1024

DeadLetterReason = Literal["invalid_payload", "rejected", "retries_exhausted"]
_Name = Annotated[str, Meta(max_length=128)]
_Count = Annotated[int, Meta(ge=1, le=2**63 - 1)]


class DeadLetter(Struct, frozen=True, kw_only=True):
    """A message set aside by a consumer. Nats-Msg-Id: `dead_letter_id`."""

    dead_letter_id: DeadLetterId
    subject: Annotated[str, Meta(min_length=1, max_length=256, description="Original subject")]
    reason: Annotated[
        DeadLetterReason,
        Meta(
            description="invalid_payload: failed validation; rejected: refused by the domain; "
            "retries_exhausted: kept failing on a transient error"
        ),
    ]
    detail: Annotated[str, Meta(max_length=2_000, description="The error, no stack trace")]
    payload: Annotated[
        str,
        Meta(
            max_length=PAYLOAD_LENGTH_MAX,
            description="The original payload as UTF-8 text, invalid bytes replaced",
        ),
    ]
    received_at: Timestamp
    consumer: Annotated[_Name | None, Meta(description="Durable consumer that gave up")] = None
    stream_sequence: Annotated[
        _Count | None, Meta(description="Position of the original in its stream")
    ] = None
    deliveries: Annotated[_Count | None, Meta(description="Delivery attempts made")] = None
    msg_id: Annotated[_Name | None, Meta(description="The original Nats-Msg-Id header")] = None
    payload_truncated: Annotated[
        bool,
        Meta(description="The payload is cut (see PAYLOAD_KEPT_BYTES_MAX) and ends with a"
             " marker; the original cannot be re-driven from this letter"),
    ] = False
    payload_bytes: Annotated[
        Annotated[int, Meta(ge=0)] | None, Meta(description="Size of the original payload in bytes")
    ] = None
    payload_sha256: Annotated[
        Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")] | None,
        Meta(description="SHA-256 of the original payload, hex"),
    ] = None
