"""Webhook signatures: Stripe's v1 scheme and HubSpot's v3, checked against payloads signed by
an independent implementation of each provider's documented algorithm (tests/fakes/stripe.py,
HubSpot's SDK test vector)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments_service.domain.errors import SignatureRejected
from payments_service.domain.signatures import (
    hubspot_signature_v3,
    hubspot_signed_uri,
    verify_hubspot_signature_v3,
    verify_stripe_signature,
)
from tests.fakes.stripe import sign_payload, signature_for

NOW = 1_800_000_000
SECRET = "whsec_current_endpoint_secret"
OLD_SECRET = "whsec_previous_endpoint_secret"
PAYLOAD = json.dumps({"id": "evt_1", "object": "event", "type": "charge.refunded"}).encode()


def verify(payload: bytes, header: str | None, secrets: tuple[str, ...] = (SECRET,),
           now: float = NOW) -> int:
    return verify_stripe_signature(payload, header, secrets, now_s=now)


def test_a_payload_signed_with_the_endpoint_secret_is_accepted() -> None:
    assert verify(PAYLOAD, sign_payload(PAYLOAD, SECRET, NOW)) == NOW


def test_a_payload_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(SignatureRejected, match="matching"):
        verify(PAYLOAD, sign_payload(PAYLOAD, "whsec_forged", NOW))


@pytest.mark.parametrize("header", [None, "", "garbage", "v1=abc", "t=abc,v1=00",
                                    f"t={NOW},t={NOW},v1={'0' * 64}"])
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureRejected):
        verify(PAYLOAD, header)


def test_a_timestamp_older_than_300_seconds_is_refused_even_with_a_valid_signature() -> None:
    assert verify(PAYLOAD, sign_payload(PAYLOAD, SECRET, NOW - 300)) == NOW - 300
    with pytest.raises(SignatureRejected, match="tolerance"):
        verify(PAYLOAD, sign_payload(PAYLOAD, SECRET, NOW - 301))


def test_a_replay_of_a_captured_delivery_is_refused_once_stale() -> None:
    header = sign_payload(PAYLOAD, SECRET, NOW)
    assert verify(PAYLOAD, header, now=NOW + 10) == NOW
    with pytest.raises(SignatureRejected):
        verify(PAYLOAD, header, now=NOW + 301)


def test_the_signature_covers_the_timestamp() -> None:
    signature = signature_for(PAYLOAD, SECRET, NOW - 1_000)
    with pytest.raises(SignatureRejected, match="matching"):
        verify(PAYLOAD, f"t={NOW},v1={signature}")


@given(st.data())
def test_a_body_altered_by_one_byte_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(PAYLOAD) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = bytearray(PAYLOAD)
    altered[index] ^= flip
    with pytest.raises(SignatureRejected):
        verify(bytes(altered), sign_payload(PAYLOAD, SECRET, NOW))


def test_a_reserialised_body_is_refused() -> None:
    reserialised = json.dumps(json.loads(PAYLOAD), indent=2).encode()
    with pytest.raises(SignatureRejected):
        verify(reserialised, sign_payload(PAYLOAD, SECRET, NOW))


def test_during_rotation_either_live_secret_is_accepted() -> None:
    both = (SECRET, OLD_SECRET)
    assert verify(PAYLOAD, sign_payload(PAYLOAD, OLD_SECRET, NOW), both) == NOW
    assert verify(PAYLOAD, sign_payload(PAYLOAD, SECRET, NOW), both) == NOW
    # Stripe sends one v1 per live secret; one of them matching is enough.
    header = f"t={NOW},v1={signature_for(PAYLOAD, OLD_SECRET, NOW)},v1={'0' * 64}"
    assert verify(PAYLOAD, header, both) == NOW
    with pytest.raises(SignatureRejected):
        verify(PAYLOAD, sign_payload(PAYLOAD, OLD_SECRET, NOW), (SECRET,))


def test_only_the_v1_scheme_counts() -> None:
    v0_only = f"t={NOW},v0={signature_for(PAYLOAD, SECRET, NOW)}"
    with pytest.raises(SignatureRejected, match="v1"):
        verify(PAYLOAD, v0_only)
    assert verify(PAYLOAD, f"{sign_payload(PAYLOAD, SECRET, NOW)},v0=deadbeef") == NOW


# -- HubSpot v3 -----------------------------------------------------------------------------------

HUBSPOT_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
HUBSPOT_URL = "https://www.example.com/webhook_uri"


def test_hubspot_v3_matches_the_sdk_test_vector() -> None:
    # hubspot-api-python tests/spec/utils/test_signature.py::test_get_signature__v3
    signature = hubspot_signature_v3(
        "POST", HUBSPOT_URL, b"{'example_field':'example_value'}", "15000000", HUBSPOT_SECRET
    )
    assert signature == "HPW73RUtKmcYoEDADG0s6MmGFWUzWJKAW07r8RDgcQw="


def _hubspot(body: bytes, *, signature: str | None, timestamp_ms: str | None, now_ms: int,
             method: str = "POST", uri: str = HUBSPOT_URL) -> None:
    verify_hubspot_signature_v3(method=method, uri=uri, body=body, signature=signature,
                                timestamp_ms=timestamp_ms, client_secret=HUBSPOT_SECRET,
                                now_ms=now_ms)


def test_hubspot_v3_accepts_a_fresh_signature_and_refuses_a_stale_or_future_one() -> None:
    body = b'[{"eventId":1}]'
    now_ms = NOW * 1000
    for skew_ms in (0, -300_000, 300_000):
        ts = str(now_ms + skew_ms)
        _hubspot(body, signature=hubspot_signature_v3("POST", HUBSPOT_URL, body, ts,
                                                      HUBSPOT_SECRET),
                 timestamp_ms=ts, now_ms=now_ms)
    for skew_ms in (-300_001, 300_001):
        ts = str(now_ms + skew_ms)
        with pytest.raises(SignatureRejected, match="window"):
            _hubspot(body, signature=hubspot_signature_v3("POST", HUBSPOT_URL, body, ts,
                                                          HUBSPOT_SECRET),
                     timestamp_ms=ts, now_ms=now_ms)


def test_hubspot_v3_covers_method_uri_body_and_timestamp() -> None:
    body = b'[{"eventId":1}]'
    ts = str(NOW * 1000)
    good = hubspot_signature_v3("POST", HUBSPOT_URL, body, ts, HUBSPOT_SECRET)
    _hubspot(body, signature=good, timestamp_ms=ts, now_ms=NOW * 1000)
    changes = [
        {"body": b'[{"eventId":2}]'},
        {"uri": HUBSPOT_URL + "?x=1"},
        {"method": "PUT"},
        {"timestamp_ms": str(NOW * 1000 + 1)},
    ]
    for change in changes:
        args = {"body": body, "signature": good, "timestamp_ms": ts, "now_ms": NOW * 1000,
                **change}
        with pytest.raises(SignatureRejected):
            _hubspot(**args)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected):
        _hubspot(body, signature=None, timestamp_ms=ts, now_ms=NOW * 1000)
    with pytest.raises(SignatureRejected):
        _hubspot(body, signature=good, timestamp_ms=None, now_ms=NOW * 1000)


def test_hubspot_uri_is_signed_with_the_documented_characters_decoded() -> None:
    encoded = "https://example.com/hook%3Fa?x=%3A%2F%40%21%24%27%28%29%2A%2C%3B&y=%20%2B"
    assert hubspot_signed_uri(encoded) == "https://example.com/hook?a?x=:/@!$'()*,;&y=%20%2B"
    body = b"[]"
    ts = str(NOW * 1000)
    decoded_signature = hubspot_signature_v3("POST", hubspot_signed_uri(encoded), body, ts,
                                             HUBSPOT_SECRET)
    _hubspot(body, signature=decoded_signature, timestamp_ms=ts, now_ms=NOW * 1000, uri=encoded)
