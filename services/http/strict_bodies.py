"""JSON bodies are decoded as strictly as their contract says.

Litestar converts a request body to the handler's msgspec Struct with `strict=False`, which
turns `"true"` into a boolean and `0` into 1970-01-01: a body the OpenAPI document (and the
contract) call invalid was accepted as something the caller did not write. This guard decodes
the body with msgspec, strictly, into the handler's `data` Struct first, and answers 400
(problem+json) for anything the contract refuses; Litestar's own conversion then only ever
sees valid bodies. Requests without a body are left to the handler's own rules.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler


@cache
def _decoder(route_handler: BaseRouteHandler) -> msgspec.json.Decoder[Any] | None:
    field = route_handler.parsed_fn_signature.parameters.get("data")
    if field is None:
        return None
    annotation = field.annotation
    if not (isinstance(annotation, type) and issubclass(annotation, msgspec.Struct)):
        return None
    return msgspec.json.Decoder(annotation, strict=True)


async def strict_json_body(connection: ASGIConnection[Any, Any, Any, Any],
                           route_handler: BaseRouteHandler) -> None:
    decoder = _decoder(route_handler)
    if decoder is None or connection.scope["type"] != "http":
        return
    body = await connection.body()  # type: ignore[attr-defined]
    if not body:
        return
    try:
        decoder.decode(body)
    except msgspec.ValidationError as exc:
        # As Litestar words it: msgspec's message, and the field as a dotted path ("tax.country";
        # None at the top, where the message names the field, or the body itself).
        message, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".") or None
        raise ValidationException(
            detail=f"Validation failed for {connection.scope.get('method')} {connection.url.path}",
            extra=[{"key": path, "message": message, "source": "body"}]) from None
    except msgspec.DecodeError:
        return  # not JSON: Litestar's own decoding answers it
