"""Reading what a JetStream stream holds, for assertions on what was published."""

from __future__ import annotations

import json
from typing import Any

import nats
from nats.js.errors import NotFoundError


async def stream_messages(
    nc: nats.NATS, stream: str
) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(subject, payload, headers) of every message still in ``stream``, in stream order."""
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    found = []
    for seq in range(max(state.first_seq, 1), state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        found.append((msg.subject or "", json.loads(msg.data or b"{}"), dict(msg.headers or {})))
    return found
