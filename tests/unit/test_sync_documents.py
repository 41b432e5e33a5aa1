"""Our invoices as Xero documents: codes from mappings with fallbacks, tax types per VAT
treatment, amounts within Xero's decimal limits and totals equal to ours to the cent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from contracts.invoicing import InvoiceIssued, InvoiceLine
from contracts.money import format_micros
from sync_service.domain import xero_documents as docs

MAPPINGS = docs.Mappings(
    products={"sms": docs.ProductMapping(item_code="SMS", account_code="201"),
              "*": docs.ProductMapping(account_code="209")},
    tax_types={("reverse_charge", "*"): "ECZROUTPUTSERVICES"},
    sales_account_code="200",
)


def line(product: str | None, quantity: int, unit_micros: int, treatment: str = "standard",
         rate: str = "20") -> InvoiceLine:
    net = quantity * unit_micros
    vat = net * int(Decimal(rate)) // 100
    return InvoiceLine(description="x", product=product, quantity=quantity,
                       unit_price=format_micros(unit_micros), net_amount=format_micros(net),
                       vat_rate=rate, vat_treatment=treatment,  # type: ignore[arg-type]
                       vat_amount=format_micros(vat))


def invoice(lines: list[InvoiceLine]) -> InvoiceIssued:
    from contracts.money import to_micros
    subtotal = sum(to_micros(x.net_amount) for x in lines)
    vat = sum(to_micros(x.vat_amount) for x in lines)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    return InvoiceIssued(event_id="e", invoice_id="inv-1", number="INV-1",
                         account_id=uuid.uuid4(), currency="GBP", lines=lines, vat_breakdown=[],
                         subtotal=format_micros(subtotal), vat_total=format_micros(vat),
                         total=format_micros(subtotal + vat), issued_at=now, due_at=now)


def test_codes_come_from_the_product_mapping_then_the_fallback() -> None:
    payload = docs.invoice_payload(invoice([line("sms", 10, 39_100), line("mms", 1, 5_000_000)]),
                                   "contact-1", MAPPINGS)
    sms, mms = payload["LineItems"]
    assert (sms["ItemCode"], sms["AccountCode"]) == ("SMS", "201")
    assert "ItemCode" not in mms and mms["AccountCode"] == "209"
    assert payload["Type"] == "ACCREC" and payload["Status"] == "AUTHORISED"
    assert payload["InvoiceNumber"] == "INV-1"


def test_without_any_mapping_the_sales_account_is_used() -> None:
    bare = docs.Mappings(products={}, tax_types={}, sales_account_code="200")
    payload = docs.invoice_payload(invoice([line("sms", 1, 1_000_000)]), "c", bare)
    assert payload["LineItems"][0]["AccountCode"] == "200"


def test_tax_types_follow_the_vat_treatment() -> None:
    bare = docs.Mappings(products={}, tax_types={}, sales_account_code="200")
    assert bare.tax_type("standard", "20") == "OUTPUT2"
    assert bare.tax_type("standard", "20.00") == "OUTPUT2"
    assert bare.tax_type("standard", "5") == "RROUTPUT"
    assert bare.tax_type("zero_rated", "0") == "ZERORATEDOUTPUT"
    assert bare.tax_type("reverse_charge", "0") == "ZERORATEDOUTPUT"
    assert bare.tax_type("exempt", "0") == "EXEMPTOUTPUT"
    assert bare.tax_type("outside_scope", "0") == "NONE"
    assert MAPPINGS.tax_type("reverse_charge", "0") == "ECZROUTPUTSERVICES"


def test_a_unit_price_beyond_four_places_goes_as_one_unit_at_the_net_amount() -> None:
    payload = docs.invoice_payload(invoice([line("sms", 3, 39_123)]), "c", MAPPINGS)
    item = payload["LineItems"][0]
    assert (item["Quantity"], item["UnitAmount"]) == ("1", "0.12")


def test_a_unit_price_within_four_places_keeps_the_quantity() -> None:
    payload = docs.invoice_payload(invoice([line("sms", 1000, 39_100)]), "c", MAPPINGS)
    item = payload["LineItems"][0]
    assert (item["Quantity"], item["UnitAmount"]) == ("1000", "0.0391")


@given(st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 50_000_000)), min_size=1,
                max_size=8))
def test_xero_totals_equal_ours_to_the_cent(specs: list[tuple[int, int]]) -> None:
    document = invoice([line("sms", q, u) for q, u in specs])
    payload = docs.invoice_payload(document, "c", MAPPINGS)
    # Xero rounds each line amount half up to the cent, as our documented rule does (a half
    # cent only arises from a sub-penny test total; issued invoices are in pence already).
    net = sum((Decimal(i["Quantity"]) * Decimal(i["UnitAmount"])).quantize(
        docs.CENT, rounding=ROUND_HALF_UP) for i in payload["LineItems"])
    tax = sum(Decimal(i["TaxAmount"]) for i in payload["LineItems"])
    assert net == Decimal(document.subtotal).quantize(docs.CENT, rounding=ROUND_HALF_UP)
    assert tax == Decimal(document.vat_total).quantize(docs.CENT, rounding=ROUND_HALF_UP)
    for item in payload["LineItems"]:
        assert -Decimal(item["UnitAmount"]).as_tuple().exponent <= 4  # type: ignore[operator]


def test_idempotency_keys_are_stable_distinct_and_short() -> None:
    a = docs.idempotency_key("invoice", "tenant-1", "inv-1")
    assert a == docs.idempotency_key("invoice", "tenant-1", "inv-1")
    assert a != docs.idempotency_key("invoice", "tenant-2", "inv-1")
    assert a != docs.idempotency_key("payment", "tenant-1", "inv-1")
    assert len(docs.idempotency_key("invoice", "t" * 64, "i" * 128)) <= 128


def test_a_full_payment_pays_exactly_xeros_total_and_never_more() -> None:
    # 10.004 + 2.004: the invoice shows 10.00 + 2.00, the sum rounds to 12.01.
    assert docs.payment_cents(10_004_000, 2_004_000, invoice_subtotal_micros=10_004_000,
                              invoice_vat_micros=2_004_000) == Decimal("12.00")
    assert docs.payment_cents(20_000_000, 0, invoice_subtotal_micros=10_000_000,
                              invoice_vat_micros=0) == Decimal("10.00")


def test_a_gross_payment_splits_into_net_and_vat_in_proportion() -> None:
    assert docs.split_gross(60_000_000, 120_000_000, 20_000_000) == (50_000_000, 10_000_000)
    assert docs.split_gross(5_000_000, 5_000_000, 0) == (5_000_000, 0)


def test_a_contact_carries_the_customers_name_email_vat_number_and_postal_address() -> None:
    customer = {"legal_name": "Acme Ltd", "address_lines": ["1 A St", "2 B Rd", "Leeds",
                                                            "West Yorkshire", "LS1 1AA"],
                "country": "GB", "billing_email": "ap@acme.example",
                "vat_number": "GB123456789"}
    payload = docs.contact_payload("acct-1", customer)
    assert payload["Name"] == "Acme Ltd" and payload["ContactNumber"] == "acct-1"
    assert payload["EmailAddress"] == "ap@acme.example"
    assert payload["TaxNumber"] == "GB123456789"
    # Xero has four address lines: the rest are joined on the fourth.
    assert payload["Addresses"] == [{"AddressType": "POBOX", "AddressLine1": "1 A St",
                                     "AddressLine2": "2 B Rd", "AddressLine3": "Leeds",
                                     "AddressLine4": "West Yorkshire, LS1 1AA",
                                     "Country": "GB"}]


def test_a_contact_without_a_profile_is_named_after_its_account_and_names_stay_in_limits(
) -> None:
    assert docs.contact_payload("acct-1") == {"Name": "Billing account acct-1",
                                              "ContactNumber": "acct-1"}
    long_name = {"legal_name": "N" * 300, "address_lines": []}
    assert len(docs.contact_name("acct-1", long_name)) == 255
    told_apart = docs.contact_name("acct-1", long_name, disambiguate=True)
    assert len(told_apart) == 255 and told_apart.endswith(" (acct-1)")
    assert "Addresses" not in docs.contact_details("acct-1", long_name)
