"""Webhook signatures of Stripe (`Stripe-Signature`) and HubSpot (`X-HubSpot-Signature-v3`).

Both are HMAC-SHA256 over bytes exactly as received, compared in constant time; the clock is
a parameter so that the rules are testable without patching time.

Stripe (docs.stripe.com/webhooks, stripe-python `_webhook.py`): the header is
``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``; the signed string is ``<t>.<raw body>``; the key
is the whole ``whsec_...`` endpoint secret. Any matching ``v1`` is accepted, because during a
secret roll Stripe signs with every live secret. Other schemes (``v0``) are ignored.

HubSpot v3 (developers.hubspot.com, hubspot-api-python `utils/signature.py`): base64 of
HMAC-SHA256(client secret, method + URI + body + timestamp), the timestamp in epoch
milliseconds from ``X-HubSpot-Request-Timestamp``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Final

from payments_service.domain.errors import SignatureRejected

STRIPE_TOLERANCE_S: Final = 300
HUBSPOT_TOLERANCE_MS: Final = 300_000
# A real header carries one timestamp and one v1 per live secret (at most a few); a bound
# keeps a hostile header from costing more than a few HMACs.
_STRIPE_HEADER_ITEMS_MAX: Final = 16
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex `v1` signature of `payload` at `timestamp` with one endpoint secret."""
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify_stripe_signature(
    payload: bytes,
    header: str | None,
    secrets: Iterable[str],
    *,
    now_s: float,
    tolerance_s: int = STRIPE_TOLERANCE_S,
) -> int:
    """Accept the delivery or raise SignatureRejected. Returns the signed timestamp.

    Like stripe-python, only a timestamp older than the tolerance is refused; a future one
    (the provider's clock ahead of ours) is accepted, since only the holder of the secret can
    produce it.
    """
    if not header:
        raise SignatureRejected("missing Stripe-Signature header")
    timestamp, candidates = _parse_stripe_header(header)
    if not candidates:
        raise SignatureRejected("no signatures found with expected scheme v1")
    if timestamp < now_s - tolerance_s:
        raise SignatureRejected("timestamp outside the tolerance zone")
    expected = [stripe_signature(payload, secret, timestamp) for secret in secrets]
    # Every pair is compared, with no early exit, so timing tells nothing about which matched.
    matched = False
    for candidate in candidates:
        for signature in expected:
            matched |= hmac.compare_digest(candidate.encode("ascii"), signature.encode("ascii"))
    if not matched:
        raise SignatureRejected("no signatures found matching the expected signature for payload")
    return timestamp


def _parse_stripe_header(header: str) -> tuple[int, list[str]]:
    items = header.split(",")
    if len(items) > _STRIPE_HEADER_ITEMS_MAX:
        raise SignatureRejected("unable to extract timestamp and signatures from header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in items:
        scheme, _, value = item.strip().partition("=")
        if scheme == "t":
            if not value.isascii() or not value.isdigit() or timestamp is not None:
                raise SignatureRejected("unable to extract timestamp and signatures from header")
            timestamp = int(value)
        elif scheme == "v1" and _HEX_SHA256.fullmatch(value):
            candidates.append(value)
    if timestamp is None:
        raise SignatureRejected("unable to extract timestamp and signatures from header")
    return timestamp, candidates


# HubSpot: "URL-decode %3A : %2F / %3F ? %40 @ %21 ! %24 $ %27 ' %28 ( %29 ) %2A * %2C , %3B ;"
# before signing; nothing else is decoded.
_HUBSPOT_DECODED: Final = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
    "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}
_HUBSPOT_ESCAPE = re.compile("|".join(_HUBSPOT_DECODED), re.IGNORECASE)


def hubspot_signed_uri(uri: str) -> str:
    return _HUBSPOT_ESCAPE.sub(lambda m: _HUBSPOT_DECODED[m.group(0).upper()], uri)


def hubspot_signature_v3(
    method: str, uri: str, body: bytes, timestamp_ms: str, client_secret: str
) -> str:
    signed = method.encode("ascii") + hubspot_signed_uri(uri).encode("utf-8") + body
    signed += timestamp_ms.encode("ascii")
    digest = hmac.new(client_secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_hubspot_signature_v3(
    *,
    method: str,
    uri: str,
    body: bytes,
    signature: str | None,
    timestamp_ms: str | None,
    client_secret: str,
    now_ms: int,
    tolerance_ms: int = HUBSPOT_TOLERANCE_MS,
) -> None:
    """Accept the delivery or raise SignatureRejected (missing, stale or not matching)."""
    if not signature:
        raise SignatureRejected("missing X-HubSpot-Signature-v3 header")
    if not timestamp_ms or not timestamp_ms.isascii() or not timestamp_ms.isdigit():
        raise SignatureRejected("missing or malformed X-HubSpot-Request-Timestamp header")
    # A window both ways: HubSpot documents five minutes, and a timestamp far ahead of our
    # clock says as little about freshness as a stale one.
    if abs(now_ms - int(timestamp_ms)) > tolerance_ms:
        raise SignatureRejected("X-HubSpot-Request-Timestamp outside the 5-minute window")
    expected = hubspot_signature_v3(method.upper(), uri, body, timestamp_ms, client_secret)
    if not signature.isascii() or not hmac.compare_digest(
        signature.encode("ascii"), expected.encode("ascii")
    ):
        raise SignatureRejected("X-HubSpot-Signature-v3 does not match")
