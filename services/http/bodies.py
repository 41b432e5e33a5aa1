"""Request bodies: JSON only, UTF-8 only, nested no deeper than a bound.

Every route of every service that takes a body takes JSON (commands, provider webhooks), so
the rule is the kernel's, in one place, before any handler or signature parsing runs:

- A POST, PUT or PATCH that carries a body must label it `application/json` (or a `+json`
  type such as `application/merge-patch+json`); parameters are accepted, and a `charset`, if
  given, must be UTF-8 (Stripe sends `application/json; charset=utf-8`). Anything else
  (text/plain, XML, a form, no label at all) is 415 problem+json with `Accept-Post` (or
  `Accept-Patch`) naming what is accepted. Requests without a body are never looked at.
- The body must be UTF-8 throughout (RFC 8259 section 8.1): msgspec raises
  UnicodeDecodeError, not a DecodeError, for invalid UTF-8 inside a string, which Litestar
  and the webhooks answered with 500.
- Arrays and objects nest at most NESTING_DEPTH_MAX levels: deeper JSON made msgspec raise
  RecursionError (500 again). No body we read nests more than a few levels.

Both body failures are 400 `malformed-body`, the problem type Litestar's own parse errors
already have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NoReturn

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, SerializationException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

JSON_MEDIA_TYPE: Final = "application/json"
# Methods whose requests carry the commands; GET, HEAD, DELETE and OPTIONS pass untouched.
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# Deepest nesting of arrays and objects a body may have. Our bodies nest three or four levels
# and Stripe's expanded objects about ten; msgspec itself gives up (RecursionError) near the
# interpreter's recursion limit, which depends on how deep the stack already is.
NESTING_DEPTH_MAX: Final = 64


class UnsupportedMediaType(ClientException):
    status_code = 415


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters allowed, and a
    charset (if any) of UTF-8."""
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type != JSON_MEDIA_TYPE and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return False
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8", "utf8"
        ):
            return False
    return True


def nesting_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded JSON value (a scalar is 0)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        pending.extend((child, depth) for child in children)
    return deepest


def check_json_body(body: bytes) -> None:
    """Raise 400 for a body that is not UTF-8 or nests deeper than NESTING_DEPTH_MAX."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        _malformed(f"The body is not valid UTF-8 (byte {exc.start})")
    # Fewer brackets than the bound cannot nest deeper than it: most bodies stop here.
    if body.count(b"[") + body.count(b"{") <= NESTING_DEPTH_MAX:
        return
    try:
        depth = nesting_depth(msgspec.json.decode(body))
    except RecursionError:
        depth = NESTING_DEPTH_MAX + 1
    except msgspec.DecodeError as exc:
        _malformed(f"The body is not valid JSON: {exc}")
    if depth > NESTING_DEPTH_MAX:
        _malformed(f"The body nests arrays and objects more than {NESTING_DEPTH_MAX}"
                         " levels deep")


def _malformed(detail: str) -> NoReturn:
    # Caused by a SerializationException: the kernel's problem mapping names it
    # `malformed-body`, as it does Litestar's own JSON errors.
    raise ClientException(detail=detail, status_code=400) from SerializationException(detail)


def _has_body(request: Request[Any, Any, Any]) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


class JsonBodyMiddleware(ASGIMiddleware):
    """415 for a body not labelled JSON, 400 for one not UTF-8 or nested too deep.

    Runs after routing (Litestar route middleware), so an unknown route is still 404 and a
    wrong method 405, whatever the body.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        if request.method in BODY_METHODS and _has_body(request):
            content_type = request.headers.get("content-type", "")
            if not is_json_media_type(content_type):
                accept = "Accept-Patch" if request.method == "PATCH" else "Accept-Post"
                label = f"got {content_type!r}" if content_type else "it had no Content-Type"
                raise UnsupportedMediaType(
                    detail=f"This endpoint takes a JSON body: send Content-Type:"
                    f" {JSON_MEDIA_TYPE} (UTF-8); {label}",
                    headers={accept: JSON_MEDIA_TYPE},
                )
            # Read once here; Litestar keeps it on the connection for the handler.
            check_json_body(await request.body())
        await next_app(scope, receive, send)
