"""Malformed messages and bodies are refused at decode time; well-formed ones pass."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import msgspec.inspect as mi
import pytest

from contracts.catalog import PricesUpdated
from contracts.http.invoicing import BillingRunRequest
from contracts.http.ledger import Adjustment, EntriesPage, GrantCredit, OpenAccount, PatchAccount
from contracts.http.problem import FieldError, Problem
from contracts.ledger import AuthorizeReply, AuthorizeRequest, EntryPosted, GrantsExpired
from contracts.money import to_micros
from contracts.payments import PaymentReceived
from contracts.usage import UsageRecorded

ACCOUNT = "3f2b6c1e-8a4d-4f0e-9b7a-2c5d8e1f0a3b"

Json = dict[str, Any]

VALID: dict[type[msgspec.Struct], Json] = {
    UsageRecorded: {
        "event_id": "msg-000001",
        "account_id": ACCOUNT,
        "product": "sms",
        "quantity": 2,
        "occurred_at": "2026-11-22T09:30:00Z",
        "status": "delivered",
        "hold_id": "hold-1",
        "reference": "campaign 42",
    },
    AuthorizeRequest: {
        "request_id": "req-1",
        "account_id": ACCOUNT,
        "product": "rcs_basic",
        "quantity": 1,
        "ttl_seconds": 600,
    },
    EntryPosted: {
        "entry_id": "ent-1",
        "account_id": ACCOUNT,
        "kind": "usage",
        "amount": "-0.0790",
        "currency": "GBP",
        "balance_after": "99.9210",
        "occurred_at": "2026-11-22T09:30:01+00:00",
    },
    PaymentReceived: {
        "payment_id": "pay-1",
        "provider": "stripe",
        "provider_reference": "cs_test_1",
        "account_id": ACCOUNT,
        "purpose": "topup",
        "amount": "100.00",
        "vat_amount": "20.00",
        "currency": "GBP",
        "received_at": "2026-11-22T10:00:00Z",
    },
    PricesUpdated: {
        "version": "hubspot-2026-11-22T09:30:00Z",
        "products": [
            {"key": "sms", "sku": "SMS-UK", "tier": "starter", "unit_prices": {"GBP": "0.0395"}},
            {"key": "sms", "sku": "SMS-UK", "tier": "enterprise", "unit_prices": {"GBP": "0.0300"}},
        ],
    },
    OpenAccount: {
        "type": "prepay",
        "currency": "EUR",
        "tax": {"country": "DE", "vat_number": "DE123456789", "reverse_charge": True},
    },
    GrantCredit: {"kind": "signup_promo", "amount": "5.00", "reason": "welcome"},
    Adjustment: {"direction": "credit", "amount": "12.50", "memo": "goodwill for outage #7"},
}


def decode(shape: type[msgspec.Struct], body: Json) -> Any:
    return msgspec.json.decode(msgspec.json.encode(body), type=shape)


def with_field(shape: type[msgspec.Struct], path: str, value: Any) -> Json:
    """A valid body of `shape` with the field at dotted `path` set to `value`."""
    body = copy.deepcopy(VALID[shape])
    *parents, leaf = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[leaf] = value
    return body


def rejects(shape: type[msgspec.Struct], body: Json) -> str:
    with pytest.raises(msgspec.ValidationError) as refused:
        decode(shape, body)
    return str(refused.value)


@pytest.mark.parametrize("shape", VALID, ids=lambda shape: shape.__name__)
def test_valid_examples_decode(shape: type[msgspec.Struct]) -> None:
    assert isinstance(decode(shape, VALID[shape]), shape)


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        (EntryPosted, "currency"),
        (PaymentReceived, "currency"),
        (OpenAccount, "currency"),
        (PricesUpdated, "products.0.unit_prices"),
    ],
)
@pytest.mark.parametrize("currency", ["gbp", "XYZ", "", "GBP "])
def test_unknown_or_lower_case_currency_is_refused(
    shape: type[msgspec.Struct], path: str, currency: str
) -> None:
    value: Any = {currency: "1.00"} if path.endswith("unit_prices") else currency
    assert "$." in rejects(shape, with_field(shape, path, value))


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        (PaymentReceived, "amount"),
        (PaymentReceived, "vat_amount"),
        (EntryPosted, "balance_after"),
        (GrantCredit, "amount"),
        (Adjustment, "amount"),
        (PricesUpdated, "products.0.unit_prices.GBP"),
    ],
)
@pytest.mark.parametrize(
    "amount",
    [
        12.5,  # a JSON number: floats never carry money
        12,
        "1.1234567",  # 7 decimal places
        "1.",
        ".5",
        "01.00",
        "1e3",
        "1,000.00",
        " 1.00",
        "1.00\n",
        "1000000000000",  # 13 integer digits: beyond the 10^12 bound of to_micros
        "NaN",
    ],
)
def test_malformed_amount_is_refused(shape: type[msgspec.Struct], path: str, amount: Any) -> None:
    rejects(shape, with_field(shape, path, amount))


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("0", 0),
        ("0.000001", 1),
        ("12.3450", 12_345_000),
        ("999999999999.999999", 999_999_999_999_999_999),
    ],
)
def test_every_amount_the_wire_accepts_converts_exactly(amount: str, micros: int) -> None:
    received = decode(PaymentReceived, with_field(PaymentReceived, "vat_amount", amount))
    assert to_micros(received.vat_amount) == micros


def test_signed_amounts_allow_a_minus_and_plain_ones_do_not() -> None:
    assert decode(EntryPosted, with_field(EntryPosted, "amount", "-5.25")).amount == "-5.25"
    rejects(PaymentReceived, with_field(PaymentReceived, "amount", "-5.25"))


@pytest.mark.parametrize(("shape", "path"), [(GrantCredit, "amount"), (Adjustment, "amount")])
@pytest.mark.parametrize("amount", ["0", "0.0", "0.000000"])
def test_grants_and_adjustments_of_nothing_are_refused(
    shape: type[msgspec.Struct], path: str, amount: str
) -> None:
    rejects(shape, with_field(shape, path, amount))
    assert decode(shape, with_field(shape, path, "0.000001")).amount == "0.000001"


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        (UsageRecorded, "event_id"),
        (UsageRecorded, "hold_id"),
        (AuthorizeRequest, "request_id"),
        (EntryPosted, "entry_id"),
        (PaymentReceived, "payment_id"),
    ],
)
@pytest.mark.parametrize(
    "key",
    ["k" * 129, "", "with space", "caf\u00e9", "tab\there", "line\nbreak", "trailing\n", "\u00a0"],
)
def test_malformed_key_is_refused(shape: type[msgspec.Struct], path: str, key: str) -> None:
    rejects(shape, with_field(shape, path, key))


def test_a_key_of_128_visible_ascii_characters_is_accepted() -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F))[:128].ljust(128, "~")
    assert decode(UsageRecorded, with_field(UsageRecorded, "event_id", key)).event_id == key


@pytest.mark.parametrize("shape", [UsageRecorded, AuthorizeRequest], ids=lambda s: s.__name__)
@pytest.mark.parametrize("quantity", [0, -1, 10**9 + 1, 1.0, "3", True, None])
def test_quantity_must_be_a_positive_bounded_integer(shape: type[msgspec.Struct], quantity: Any) -> None:
    rejects(shape, with_field(shape, "quantity", quantity))


@pytest.mark.parametrize("quantity", [1, 10**9])
def test_quantity_bounds_are_inclusive(quantity: int) -> None:
    assert decode(UsageRecorded, with_field(UsageRecorded, "quantity", quantity)).quantity == (quantity)


@pytest.mark.parametrize("ttl", [0, -5, 86_401])
def test_authorize_ttl_outside_one_second_to_a_day_is_refused(ttl: int) -> None:
    rejects(AuthorizeRequest, with_field(AuthorizeRequest, "ttl_seconds", ttl))


@pytest.mark.parametrize("product", ["SMS", "rcs-basic", "1sms", "", "s" * 65, "sms ", "sm\u00df"])
def test_product_key_is_a_lower_case_identifier(product: str) -> None:
    rejects(UsageRecorded, with_field(UsageRecorded, "product", product))


@pytest.mark.parametrize("status", ["DELIVERED", "sent", ""])
def test_usage_status_outside_the_three_is_refused(status: str) -> None:
    rejects(UsageRecorded, with_field(UsageRecorded, "status", status))


@pytest.mark.parametrize(
    "when", ["2026-11-22T09:30:00", "2026-11-22", "yesterday", 1_764_000_000, "2026-13-01T00:00Z"]
)
def test_time_without_offset_or_malformed_is_refused(when: Any) -> None:
    rejects(UsageRecorded, with_field(UsageRecorded, "occurred_at", when))


def test_time_with_an_offset_is_kept_as_that_instant() -> None:
    usage = decode(UsageRecorded, with_field(UsageRecorded, "occurred_at", "2026-11-22T11:30:00+02:00"))
    assert usage.occurred_at == datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    assert usage.occurred_at.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("account_id", ["42", "not-a-uuid", "", 42])
def test_account_id_must_be_a_uuid(account_id: Any) -> None:
    rejects(UsageRecorded, with_field(UsageRecorded, "account_id", account_id))


def _required_fields() -> list[tuple[type[msgspec.Struct], str]]:
    pairs = []
    for shape in VALID:
        info = mi.type_info(shape)
        assert isinstance(info, mi.StructType)
        pairs += [(shape, field.encode_name) for field in info.fields if field.required]
    return pairs


@pytest.mark.parametrize(("shape", "field"), _required_fields(), ids=lambda p: getattr(p, "__name__", p))
def test_missing_required_field_is_refused(shape: type[msgspec.Struct], field: str) -> None:
    body = copy.deepcopy(VALID[shape])
    body.pop(field)
    assert f"missing required field `{field}`" in rejects(shape, body)


@pytest.mark.parametrize(("shape", "field"), _required_fields(), ids=lambda p: getattr(p, "__name__", p))
def test_null_in_a_required_field_is_refused(shape: type[msgspec.Struct], field: str) -> None:
    rejects(shape, with_field(shape, field, None))


def test_missing_nested_required_field_is_refused() -> None:
    body = copy.deepcopy(VALID[OpenAccount])
    del body["tax"]["country"]
    assert "tax" in rejects(OpenAccount, body)


@pytest.mark.parametrize("shape", VALID, ids=lambda shape: shape.__name__)
def test_unknown_fields_are_ignored(shape: type[msgspec.Struct]) -> None:
    body = VALID[shape] | {"added_in_v2": {"anything": [1, 2]}, "x": None}
    assert decode(shape, body) == decode(shape, VALID[shape])


def test_unknown_fields_in_nested_objects_are_ignored() -> None:
    body = with_field(OpenAccount, "tax.added_in_v2", "anything")
    assert decode(OpenAccount, body) == decode(OpenAccount, VALID[OpenAccount])


def test_absent_optional_fields_take_their_defaults() -> None:
    body = {k: v for k, v in VALID[UsageRecorded].items() if k not in ("hold_id", "reference")}
    usage = decode(UsageRecorded, body)
    assert usage.hold_id is None
    assert usage.reference is None
    assert decode(AuthorizeRequest, {**VALID[AuthorizeRequest], "ttl_seconds": None}).ttl_seconds is None


@pytest.mark.parametrize(("length", "accepted"), [(9, False), (10, True), (500, True), (501, False)])
def test_adjustment_memo_is_10_to_500_characters(length: int, accepted: bool) -> None:
    body = with_field(Adjustment, "memo", "m" * length)
    if accepted:
        assert len(decode(Adjustment, body).memo) == length
    else:
        rejects(Adjustment, body)


@pytest.mark.parametrize("direction", ["CREDIT", "refund", ""])
def test_adjustment_direction_is_credit_or_debit(direction: str) -> None:
    rejects(Adjustment, with_field(Adjustment, "direction", direction))


@pytest.mark.parametrize("kind", ["promo", "", "SIGNUP_PROMO"])
def test_grant_kind_outside_the_listed_kinds_is_refused(kind: str) -> None:
    rejects(GrantCredit, with_field(GrantCredit, "kind", kind))


@pytest.mark.parametrize(("country", "accepted"), [("GB", True), ("gb", False), ("GBR", False)])
def test_tax_country_is_iso_alpha_2(country: str, accepted: bool) -> None:
    body = with_field(OpenAccount, "tax.country", country)
    if accepted:
        assert decode(OpenAccount, body).tax.country == country
    else:
        rejects(OpenAccount, body)


@pytest.mark.parametrize(
    ("period", "accepted"),
    [
        ("2026-10", True),
        ("2026-13", False),
        ("2026-1", False),
        ("26-10", False),
        ("2026-10-01", False),
    ],
)
def test_billing_run_period_is_a_calendar_month(period: str, accepted: bool) -> None:
    if accepted:
        assert decode(BillingRunRequest, {"period": period}).period == period
    else:
        rejects(BillingRunRequest, {"period": period})


def test_authorize_reply_refusal_needs_a_reason_and_approval_has_none() -> None:
    assert decode(AuthorizeReply, {"approved": False, "reason": "insufficient_funds"}).reason == (
        "insufficient_funds"
    )
    rejects(AuthorizeReply, {"approved": False})
    rejects(AuthorizeReply, {"approved": True, "hold_id": "h-1", "reason": "account_closed"})
    rejects(AuthorizeReply, {"approved": False, "reason": "because"})


def test_invoice_payment_must_name_its_invoice() -> None:
    body = with_field(PaymentReceived, "purpose", "invoice")
    rejects(PaymentReceived, body)
    assert decode(PaymentReceived, body | {"invoice_id": "inv-1"}).invoice_id == "inv-1"


def test_empty_price_list_is_refused_because_it_would_wipe_every_price() -> None:
    rejects(PricesUpdated, with_field(PricesUpdated, "products", []))


def test_price_list_with_two_prices_for_one_product_and_tier_is_refused() -> None:
    body = with_field(PricesUpdated, "products.1.tier", "starter")
    assert "once" in rejects(PricesUpdated, body)


@pytest.mark.parametrize("version", [7, "", "with space", "v" * 129])
def test_price_list_version_is_an_opaque_key(version: Any) -> None:
    rejects(PricesUpdated, with_field(PricesUpdated, "version", version))


def test_lists_are_bounded() -> None:
    empty_sweep = {
        "event_id": "e-1",
        "account_id": ACCOUNT,
        "currency": "GBP",
        "grants": [],
        "total_expired": "0",
        "balance_after": "0",
        "occurred_at": "2026-11-22T00:00:00Z",
    }
    rejects(GrantsExpired, empty_sweep)
    entry = {
        "entry_id": "e",
        "kind": "usage",
        "amount": "-1",
        "balance_after": "0",
        "description": "",
        "reference": None,
        "occurred_at": "2026-11-22T00:00:00Z",
    }
    assert len(decode(EntriesPage, {"items": [entry] * 500, "next_cursor": None}).items) == 500
    rejects(EntriesPage, {"items": [entry] * 501, "next_cursor": None})


def test_patch_tells_an_absent_field_from_a_cleared_one() -> None:
    untouched = decode(PatchAccount, {})
    cleared = decode(PatchAccount, {"credit_limit": None, "tier": "starter"})
    assert untouched.credit_limit is msgspec.UNSET
    assert cleared.credit_limit is None
    assert cleared.tier == "starter"
    assert msgspec.json.decode(msgspec.json.encode(untouched)) == {}
    rejects(PatchAccount, {"type": None})


def test_problem_leaves_out_absent_members_and_keeps_the_required_ones() -> None:
    problem = Problem(type="about:blank", title="Not found", status=404, detail="no such account")
    assert msgspec.json.decode(msgspec.json.encode(problem)) == {
        "type": "about:blank",
        "title": "Not found",
        "status": 404,
        "detail": "no such account",
    }
    invalid = Problem(
        type="https://errors.example/validation",
        title="Validation failed",
        status=422,
        detail="1 invalid field",
        errors=[FieldError(field="memo", message="at least 10 characters")],
    )
    assert msgspec.json.decode(msgspec.json.encode(invalid))["errors"] == [
        {"field": "memo", "message": "at least 10 characters"}
    ]
    rejects(Problem, {"type": "about:blank", "title": "x", "status": 200, "detail": "ok"})


def test_decoded_ids_have_their_python_types() -> None:
    usage = decode(UsageRecorded, VALID[UsageRecorded])
    assert usage.account_id == UUID(ACCOUNT)
    assert usage.occurred_at.tzinfo is not None


@pytest.mark.parametrize(("path", "value"), [("type", "prepaid"), ("type", "PREPAY"), ("tier", "gold")])
def test_account_type_and_tier_are_those_of_the_spec(path: str, value: str) -> None:
    rejects(OpenAccount, with_field(OpenAccount, path, value))
    assert decode(OpenAccount, with_field(OpenAccount, "tier", "bespoke")).tier == "bespoke"
