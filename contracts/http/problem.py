"""RFC 9457 problem details: the body of every HTTP error (application/problem+json)."""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta, Struct

# A body with more invalid fields than this is reported by its first hundred.
FIELD_ERRORS_MAX: Final = 100


class FieldError(Struct, frozen=True, kw_only=True, omit_defaults=True):
    field: Annotated[
        str,
        Meta(max_length=256, description="Path of the field in the body", examples=["tax.country"]),
    ]
    message: Annotated[str, Meta(max_length=500)]
    source: Annotated[
        Annotated[str, Meta(max_length=32)] | None,
        Meta(description="Where the field was: body, query, path or header"),
    ] = None


class Problem(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What went wrong, for people and programs; never a stack trace.

    Absent optional members are left out of the body rather than sent as null.
    """

    type: Annotated[
        str,
        Meta(
            max_length=512,
            description="URI identifying the kind of problem",
            examples=["https://billing.example/problems/not-found"],
        ),
    ]
    title: Annotated[str, Meta(max_length=200, examples=["Validation failed"])]
    status: Annotated[int, Meta(ge=400, le=599, description="The HTTP status code")]
    detail: Annotated[str, Meta(max_length=2_000)]
    instance: Annotated[
        Annotated[str, Meta(max_length=512)] | None,
        Meta(description="URI of this occurrence"),
    ] = None
    request_id: Annotated[
        Annotated[str, Meta(max_length=128)] | None,
        Meta(description="Quote it when reporting the problem"),
    ] = None
    errors: Annotated[
        Annotated[list[FieldError], Meta(max_length=FIELD_ERRORS_MAX)] | None,
        Meta(description="Validation errors, per field"),
    ] = None
