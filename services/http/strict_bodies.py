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


def _integral_floats_fit(body: bytes, decoder: msgspec.json.Decoder[Any]) -> bool:
    """Whether the body is valid once numbers like 28.0 are read as the integers they are."""

    def integral(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        if isinstance(value, list):
            return [integral(item) for item in value]
        if isinstance(value, dict):
            return {key: integral(item) for key, item in value.items()}
        return value

    try:
        msgspec.convert(integral(msgspec.json.decode(body)), decoder.type, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return True


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
        if "got `float`" in str(exc) and _integral_floats_fit(body, decoder):
            return  # 28.0 for an integer: JSON (and JSON Schema) call it the integer 28

        # As Litestar words it: msgspec's message, and the field as a dotted path ("tax.country";
        # None at the top, where the message names the field, or the body itself).
        message, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".") or None
        raise ValidationException(
            detail=f"Validation failed for {connection.scope.get('method')} {connection.url.path}",
            extra=[{"key": path, "message": message, "source": "body"}]) from None
    except msgspec.DecodeError:
        return  # not JSON: Litestar's own decoding answers it
