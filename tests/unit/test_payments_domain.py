"""Pure rules of the payments service: VAT on top-ups, what an invoice checkout charges,
matching a provider's session with ours, the cumulative refund split, Stripe event parsing."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.money import to_micros
from payments_service.app.stripe_api import SessionLinks, checkout_session_params
from payments_service.domain.checkout import (
    CheckoutRecord,
    InvoiceBalance,
    TaxProfile,
    minor_to_amount,
    quote_invoice,
    quote_topup,
    session_mismatches,
)
from payments_service.domain.errors import (
    AmountNotPayable,
    InvoiceNotPayable,
    MalformedWebhook,
    TaxProfileInvalid,
    TopUpOutOfRange,
)
from payments_service.domain.provider_events import (
    CheckoutSession,
    HubSpotNotification,
    Refund,
    decode_hubspot_notifications,
    decode_stripe_event,
    decode_stripe_object,
)
from payments_service.domain.refunds import next_refund, refunded_total, vat_share

LIMITS = {"min_micros": to_micros("10.00"), "max_micros": to_micros("10000.00")}
UK = TaxProfile()
FRENCH_BUSINESS = TaxProfile(country="FR", vat_number="FR40303265045", reverse_charge=True)


def test_a_uk_top_up_of_100_adds_20_vat_on_top() -> None:
    quote = quote_topup(to_micros("100.00"), "GBP", UK, **LIMITS)
    assert (quote.net_minor, quote.vat_minor, quote.total_minor) == (10_000, 2_000, 12_000)
    assert (quote.vat_rate_bp, quote.treatment) == (2_000, "standard")


def test_reverse_charge_needs_a_business_outside_the_uk() -> None:
    quote = quote_topup(to_micros("100.00"), "EUR", FRENCH_BUSINESS, **LIMITS)
    assert (quote.vat_minor, quote.treatment) == (0, "reverse_charge")
    with pytest.raises(TaxProfileInvalid):
        quote_topup(to_micros("100.00"), "GBP", TaxProfile(country="GB", vat_number="GB1",
                                                            reverse_charge=True), **LIMITS)
    with pytest.raises(TaxProfileInvalid):
        quote_topup(to_micros("100.00"), "EUR", TaxProfile(country="FR", reverse_charge=True),
                    **LIMITS)


@pytest.mark.parametrize("amount", ["9.99", "10000.01"])
def test_top_ups_outside_the_limits_are_refused(amount: str) -> None:
    with pytest.raises(TopUpOutOfRange):
        quote_topup(to_micros(amount), "GBP", UK, **LIMITS)


def test_limits_are_inclusive() -> None:
    assert quote_topup(to_micros("10.00"), "GBP", UK, **LIMITS).net_minor == 1_000
    assert quote_topup(to_micros("10000.00"), "GBP", UK, **LIMITS).net_minor == 1_000_000


def test_a_top_up_in_fractions_of_a_penny_cannot_be_charged() -> None:
    with pytest.raises(AmountNotPayable):
        quote_topup(to_micros("10.005"), "GBP", UK, **LIMITS)


@given(st.integers(min_value=1_000, max_value=1_000_000))
def test_top_up_vat_is_exactly_a_fifth_rounded_half_up(net_minor: int) -> None:
    quote = quote_topup(net_minor * 10_000, "GBP", UK, **LIMITS)
    assert quote.net_minor == net_minor
    assert quote.vat_minor == (2 * net_minor + 5) // 10  # net/5, half away from zero


def test_an_invoice_is_charged_what_is_still_owed_net_and_vat_apart() -> None:
    quote = quote_invoice(InvoiceBalance(net_due_micros=to_micros("100.00"),
                                         vat_due_micros=to_micros("20.00")), "GBP")
    assert (quote.net_minor, quote.vat_minor) == (10_000, 2_000)
    with pytest.raises(InvoiceNotPayable):
        quote_invoice(InvoiceBalance(net_due_micros=0, vat_due_micros=0), "GBP")


def record(**changes: object) -> CheckoutRecord:
    values: dict[str, object] = {
        "checkout_id": "chk-1", "account_id": uuid.UUID(int=1), "purpose": "topup",
        "invoice_id": None, "net_minor": 10_000, "vat_minor": 2_000, "currency": "GBP",
        "description": "Account credit (GBP)", "stripe_session_id": "cs_1",
    }
    values.update(changes)
    return CheckoutRecord(**values)  # type: ignore[arg-type]


def session(**changes: object) -> CheckoutSession:
    values: dict[str, object] = {
        "id": "cs_1", "amount_total": 12_000, "currency": "gbp", "payment_status": "paid",
        "mode": "payment", "client_reference_id": "chk-1",
        "metadata": {"checkout_id": "chk-1", "account_id": str(uuid.UUID(int=1)),
                     "purpose": "topup"},
    }
    values.update(changes)
    return CheckoutSession(**values)  # type: ignore[arg-type]


def test_a_session_matching_our_checkout_has_no_mismatch() -> None:
    assert session_mismatches(record(), session()) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_total": 1_200},
        {"currency": "eur"},
        {"metadata": {"checkout_id": "chk-1", "account_id": str(uuid.UUID(int=2)),
                      "purpose": "topup"}},
        {"metadata": {}},
        {"client_reference_id": "chk-2"},
        {"mode": "subscription"},
    ],
)
def test_any_difference_from_our_checkout_is_a_mismatch(changes: dict[str, object]) -> None:
    assert session_mismatches(record(), session(**changes)) != []


def test_a_session_other_than_the_one_recorded_is_a_mismatch() -> None:
    assert session_mismatches(record(stripe_session_id="cs_other"), session()) != []


def test_minor_units_go_on_the_wire_as_decimal_strings() -> None:
    assert [minor_to_amount(m) for m in (12_000, 5, 0)] == ["120.00", "0.05", "0.00"]


def test_session_params_put_vat_on_its_own_line_and_name_our_checkout() -> None:
    params = checkout_session_params(record(), SessionLinks(success_url="https://p/s",
                                                            cancel_url="https://p/c"))
    form = dict(params)
    assert form["line_items[0][price_data][unit_amount]"] == "10000"
    assert form["line_items[1][price_data][unit_amount]"] == "2000"
    assert form["line_items[1][price_data][product_data][name]"] == "VAT"
    assert form["line_items[0][price_data][currency]"] == "gbp"
    assert form["metadata[account_id]"] == str(uuid.UUID(int=1))
    assert form["payment_intent_data[metadata][checkout_id]"] == "chk-1"
    assert form["client_reference_id"] == "chk-1"
    without_vat = dict(checkout_session_params(record(vat_minor=0), SessionLinks("a", "b")))
    assert "line_items[1][quantity]" not in without_vat


# -- refunds --------------------------------------------------------------------------------------


def test_a_full_refund_takes_back_exactly_the_credit_and_the_vat() -> None:
    split = next_refund(already_refunded_minor=0, new_total_minor=12_000, total_minor=12_000,
                        vat_minor=2_000)
    assert split is not None
    assert (split.gross_minor, split.net_minor, split.vat_minor) == (12_000, 10_000, 2_000)


def test_a_refunded_total_that_did_not_grow_records_nothing() -> None:
    for new in (0, 5_000, 6_000):
        assert next_refund(already_refunded_minor=6_000, new_total_minor=new,
                           total_minor=12_000, vat_minor=2_000) is None


def test_the_refunded_total_is_the_larger_of_both_views_and_never_more_than_paid() -> None:
    assert refunded_total(3_000, 5_000, 12_000) == 5_000
    assert refunded_total(9_000, 5_000, 12_000) == 9_000
    assert refunded_total(20_000, 0, 12_000) == 12_000


@given(
    total=st.integers(min_value=1, max_value=10**9),
    vat_percent=st.integers(min_value=0, max_value=50),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=8),
)
def test_refunds_in_any_order_add_up_to_the_split_of_their_total(
    total: int, vat_percent: int, cuts: list[float]
) -> None:
    vat = total * vat_percent // 100
    observed = [int(total * cut) for cut in cuts] + [total]  # any order, with repeats
    recorded = 0
    net_sum = vat_sum = 0
    for cumulative in observed:
        split = next_refund(already_refunded_minor=recorded,
                            new_total_minor=refunded_total(cumulative, 0, total),
                            total_minor=total, vat_minor=vat)
        if split is not None:
            assert split.gross_minor > 0 and split.net_minor >= 0 and split.vat_minor >= 0
            recorded = split.refunded_total_minor
            net_sum += split.net_minor
            vat_sum += split.vat_minor
    assert (net_sum + vat_sum, vat_sum) == (total, vat)
    assert vat_share(total, vat, total) == vat


# -- provider events --------------------------------------------------------------------------------


def test_a_stripe_event_keeps_its_object_for_typed_decoding() -> None:
    body = json.dumps({
        "id": "evt_1", "type": "refund.created", "created": 1, "livemode": False,
        "api_version": "2024-06-20", "unknown_field": {"ignored": True},
        "data": {"object": {"id": "re_1", "amount": 500, "currency": "gbp",
                            "payment_intent": {"id": "pi_1", "object": "payment_intent"},
                            "status": "pending"}},
    }).encode()
    event = decode_stripe_event(body)
    refund = decode_stripe_object(event, Refund)
    assert (refund.payment_intent_id, refund.counts) == ("pi_1", True)
    assert not decode_stripe_object(
        decode_stripe_event(body.replace(b'"pending"', b'"failed"')), Refund).counts


@pytest.mark.parametrize("body", [b"", b"[]", b'{"id": "evt_1"}', b'{"id": 1, "type": "x"}'])
def test_a_malformed_stripe_event_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        decode_stripe_event(body)


def test_a_stripe_object_with_a_negative_amount_is_refused() -> None:
    body = json.dumps({"id": "evt_1", "type": "refund.created", "created": 1,
                       "data": {"object": {"id": "re_1", "amount": -5, "currency": "gbp"}}})
    with pytest.raises(MalformedWebhook):
        decode_stripe_object(decode_stripe_event(body.encode()), Refund)


def test_hubspot_invoice_paid_notifications_are_recognised() -> None:
    paid = HubSpotNotification(eventId=1, objectTypeId="0-53", objectId=9,
                               subscriptionType="object.propertyChange",
                               propertyName="hs_invoice_status", propertyValue="paid")
    assert paid.is_invoice_paid
    assert HubSpotNotification(eventId=1, subscriptionType="invoice.paid").is_invoice_paid
    assert not HubSpotNotification(eventId=1, objectTypeId="0-1",
                                   propertyName="hs_invoice_status",
                                   propertyValue="paid").is_invoice_paid
    assert not HubSpotNotification(eventId=1, objectTypeId="0-53",
                                   propertyName="hs_invoice_status",
                                   propertyValue="open").is_invoice_paid


def test_a_hubspot_batch_of_more_than_100_is_refused() -> None:
    batch = [{"eventId": i} for i in range(101)]
    with pytest.raises(MalformedWebhook):
        decode_hubspot_notifications(json.dumps(batch).encode())
    decoded = decode_hubspot_notifications(json.dumps(batch[:100]).encode())
    assert len(decoded) == 100
    assert decoded[0] == ('{"eventId": 0}', HubSpotNotification(eventId=0))
