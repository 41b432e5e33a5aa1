"""Cursor paging, shared by every list endpoint."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

Cursor = Annotated[
    str, Meta(min_length=1, max_length=512, description="Opaque; pass it back as ?cursor=")
]
NextCursor = Annotated[Cursor | None, Meta(description="Null on the last page")]
