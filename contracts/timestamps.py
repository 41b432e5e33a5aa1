"""Instants on the wire: RFC 3339 with an offset.

A time without an offset is refused rather than assumed to be UTC: a producer in another
zone would otherwise shift every usage record by hours without anyone noticing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

Timestamp = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339 time with an offset; services emit UTC",
        examples=["2026-11-22T09:30:00Z"],
    ),
]
