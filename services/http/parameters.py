"""Query parameters the services share, documented as they are checked.

An instant is an RFC 3339 date-time with an offset, and nothing else: Litestar would also take
a number as seconds since the epoch, which the OpenAPI document never promised, so instants
are read as strings and parsed here. A cursor is opaque: only a `next_cursor` this API
returned (with the same filters) is one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from litestar.exceptions import ValidationException
from litestar.params import QueryParameter

INSTANT_CHARS_MAX: Final = 40
CURSOR_RULES: Final = (
    "Opaque: pass back the next_cursor of the previous page unchanged, with the same"
    " filters; a value this API did not return is 400. Absent: the first page.")


def instant_parameter(description: str, name: str | None = None) -> Any:
    return QueryParameter(name=name, description=f"{description} (RFC 3339, with an offset)",
                          max_length=INSTANT_CHARS_MAX,
                          schema_extra={"format": "date-time"})


def cursor_parameter(chars_max: int) -> Any:
    return QueryParameter(min_length=1, max_length=chars_max, description=CURSOR_RULES)


def parse_instant(value: str | None, name: str) -> datetime | None:
    """The instant of an RFC 3339 date-time with an offset; 400 for anything else."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in value.upper():
        raise ValidationException(
            detail=f"{name} must be an RFC 3339 date-time with an offset, such as"
                   " 2026-11-01T00:00:00Z",
            extra=[{"key": name, "message": "not an RFC 3339 date-time", "source": "query"}])
    return moment.astimezone(UTC)
