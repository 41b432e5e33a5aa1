"""Invoice and credit-note PDFs, read back with pypdf: every field HMRC asks of a VAT invoice
is on the page, reverse-charge wording appears exactly when due, caller text is printed
literally, many lines paginate, and the same document is the same bytes every time."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import msgspec
import pypdf
import pytest

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.invoicing import InvoiceLine, VatBreakdown
from invoicing_service.documents import (
    Party,
    PartyError,
    SterlingVat,
    document_sha256,
    render_credit_note_pdf,
    render_invoice_pdf,
)
from invoicing_service.documents import pdf as pdf_fonts
from invoicing_service.documents.wording import (
    REVERSE_CHARGE_ABROAD,
    REVERSE_CHARGE_DOMESTIC,
    money,
    tax_point,
)

SUPPLIER = Party(
    name="Relay Messaging Ltd",
    address_lines=("1 Example Street", "London", "EC1A 1BB"),
    country="GB",
    vat_number="GB123456789",
    email="billing@relay.example",
)
UK_CUSTOMER = Party(
    name="Acme Widgets & Sons <Ltd>",
    address_lines=("22 High Street", "Leeds", "LS1 4AP"),
    country="GB",
    vat_number=None,
    email="accounts@acme.example",
    po_number="PO-7781",
)
DE_BUSINESS = Party(
    name="Beispiel GmbH",
    address_lines=("Hauptstraße 5", "10115 Berlin"),
    country="DE",
    vat_number="DE136695976",
    email="rechnung@beispiel.example",
)
ISSUED_AT = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
DUE_AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def line(description: str = "SMS to UK numbers (tier 1)", *, quantity: int = 12_000,
         unit_price: str = "0.0395", net: str = "474.00", rate: str = "20",
         treatment: str = "standard", vat: str = "94.80") -> InvoiceLine:
    return InvoiceLine(description=description, product="sms_uk", quantity=quantity,
                       unit_price=unit_price, net_amount=net, vat_rate=rate,
                       vat_treatment=treatment, vat_amount=vat)  # type: ignore[arg-type]


def uk_invoice(lines: list[InvoiceLine] | None = None, **changes: object) -> InvoiceView:
    fields: dict[str, object] = dict(
        invoice_id="inv-2a07", number="INV-2026-000123",
        account_id="0b1e4c3a-59a4-4f7c-a0a1-3c8f7f1f2d10", status="open", currency="GBP",
        period="2026-10",
        lines=lines or [line(), line("Number rental: +44 7700 900123", quantity=1,
                                     unit_price="5.00", net="5.00", vat="1.00")],
        vat_breakdown=[VatBreakdown(vat_rate="20", vat_treatment="standard",
                                    net_amount="479.00", vat_amount="95.80")],
        subtotal="479.00", vat_total="95.80", total="574.80", amount_paid="100.00",
        amount_due="474.80", issued_at=ISSUED_AT, due_at=DUE_AT,
    )
    fields.update(changes)
    return msgspec.convert(fields, InvoiceView, strict=False)


def reverse_charge_invoice() -> InvoiceView:
    return uk_invoice(
        lines=[line("SMS to German numbers", quantity=1_000, unit_price="0.05", net="50.00",
                    rate="0", treatment="reverse_charge", vat="0.00")],
        number="INV-2026-000124", currency="EUR",
        vat_breakdown=[VatBreakdown(vat_rate="0", vat_treatment="reverse_charge",
                                    net_amount="50.00", vat_amount="0.00")],
        subtotal="50.00", vat_total="0.00", total="50.00", amount_paid="0.00",
        amount_due="50.00",
    )


def credit_note() -> CreditNoteView:
    return CreditNoteView(
        credit_note_id="cn-0b5c", number="CN-2026-000007", invoice_id="inv-2a07",
        account_id="0b1e4c3a-59a4-4f7c-a0a1-3c8f7f1f2d10",  # type: ignore[arg-type]
        currency="GBP",
        lines=[line("Credit: SMS billed twice", quantity=1_000, unit_price="0.0395",
                    net="39.50", vat="7.90")],
        vat_breakdown=[VatBreakdown(vat_rate="20", vat_treatment="standard",
                                    net_amount="39.50", vat_amount="7.90")],
        subtotal="39.50", vat_total="7.90", total="47.40", reason="Duplicate usage <batch 7>",
        issued_at=datetime(2026, 11, 20, 15, 0, tzinfo=UTC),
    )


def text_of(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def pages_of(pdf: bytes) -> int:
    return len(pypdf.PdfReader(io.BytesIO(pdf)).pages)


def test_a_uk_invoice_carries_every_field_hmrc_requires() -> None:
    text = text_of(render_invoice_pdf(uk_invoice(), SUPPLIER, UK_CUSTOMER))
    for expected in (
        "VAT invoice",
        # supplier: name, address, VAT registration number
        "Relay Messaging Ltd", "1 Example Street", "EC1A 1BB", "GB123456789",
        # customer: name and address
        "Acme Widgets & Sons <Ltd>", "22 High Street", "LS1 4AP",
        # unique number, issue date, tax point (the period's last day), due date
        "INV-2026-000123", "Issue date", "1 November 2026", "Tax point", "31 October 2026",
        "1 December 2026", "October 2026",
        # per line: description, quantity, unit price, net, rate, VAT
        "SMS to UK numbers (tier 1)", "12,000", "£0.0395", "£474.00", "20%", "£94.80",
        "Number rental: +44 7700 900123",
        # totals and the VAT summary per rate and treatment
        "Total excluding VAT", "£479.00", "£95.80", "£574.80", "VAT summary", "Standard",
        # what was paid and what is still owed
        "Amount paid", "£100.00", "Amount due", "£474.80",
        # the customer's purchase order
        "PO-7781",
    ):
        assert expected in text, expected


def test_reverse_charge_wording_appears_only_when_a_line_is_reverse_charged() -> None:
    standard = text_of(render_invoice_pdf(uk_invoice(), SUPPLIER, UK_CUSTOMER))
    reverse = text_of(render_invoice_pdf(reverse_charge_invoice(), SUPPLIER, DE_BUSINESS))
    assert "Reverse charge" not in standard
    assert REVERSE_CHARGE_ABROAD in reverse
    assert REVERSE_CHARGE_DOMESTIC not in reverse
    # The customer's VAT number is what makes the reverse charge lawful: it is on the page.
    assert "DE136695976" in reverse
    assert "€50.00" in reverse and "Hauptstraße 5" in reverse


def test_a_domestic_reverse_charge_names_hmrc() -> None:
    uk_business = Party(name="Builder Ltd", address_lines=("3 Lane",), country="GB",
                        vat_number="GB987654321")
    text = text_of(render_invoice_pdf(reverse_charge_invoice(), SUPPLIER, uk_business))
    assert REVERSE_CHARGE_DOMESTIC in text
    assert REVERSE_CHARGE_ABROAD not in text


def test_zero_rated_and_exempt_lines_give_their_reason() -> None:
    invoice = uk_invoice(lines=[
        line("Export service", net="10.00", rate="0", treatment="zero_rated", vat="0.00"),
        line("Exempt service", net="10.00", rate="0", treatment="exempt", vat="0.00"),
    ])
    text = text_of(render_invoice_pdf(invoice, SUPPLIER, UK_CUSTOMER))
    assert "Zero-rated supply" in text and "Exempt from VAT" in text
    assert "Reverse charge" not in text


def test_a_euro_invoice_that_charges_vat_shows_the_vat_in_sterling() -> None:
    euro = uk_invoice(currency="EUR")
    sterling = SterlingVat(vat_amount="81.73", exchange_rate="0.8531",
                           rate_source="HMRC period rate, November 2026")
    text = text_of(render_invoice_pdf(euro, SUPPLIER, UK_CUSTOMER, sterling_vat=sterling))
    assert "VAT in sterling: £81.73 (1 EUR = 0.8531 GBP, HMRC period rate, November 2026)" \
        in text.replace("\n", " ")
    # Sterling documents and documents without VAT have nothing to convert.
    gbp = text_of(render_invoice_pdf(uk_invoice(), SUPPLIER, UK_CUSTOMER,
                                     sterling_vat=sterling))
    reverse = text_of(render_invoice_pdf(reverse_charge_invoice(), SUPPLIER, DE_BUSINESS,
                                         sterling_vat=sterling))
    assert "VAT in sterling" not in gbp and "VAT in sterling" not in reverse


def test_no_po_number_line_when_the_customer_has_none() -> None:
    text = text_of(render_invoice_pdf(reverse_charge_invoice(), SUPPLIER, DE_BUSINESS))
    assert "Purchase order" not in text


def test_an_ad_hoc_invoice_has_its_issue_date_as_tax_point() -> None:
    text = text_of(render_invoice_pdf(uk_invoice(period=None), SUPPLIER, UK_CUSTOMER))
    assert "Tax point\n1 November 2026" in text or "Tax point 1 November 2026" in text
    assert tax_point(None, ISSUED_AT.date()) == ISSUED_AT.date()
    assert "31 October 2026" not in text


def test_a_draft_says_it_is_not_a_vat_invoice() -> None:
    draft = uk_invoice(number=None, status="draft", issued_at=None, due_at=None)
    text = text_of(render_invoice_pdf(draft, SUPPLIER, UK_CUSTOMER))
    assert "not a VAT invoice" in text and "INV-" not in text


def test_markup_in_caller_text_is_printed_literally() -> None:
    # One long enough to wrap (an escaped paragraph), one short enough to fit (a plain cell).
    nasty = "Usage <b>bold</b> & <font size=40>big</font> &amp; </para>"
    short = "A<i>&amp;"
    customer = Party(name="<b>Very</b> long & winding customer name " * 3,
                     address_lines=("<br/> Road",), country="GB")
    invoice = uk_invoice(lines=[line(nasty), line(short)])
    text = text_of(render_invoice_pdf(invoice, SUPPLIER, customer)).replace("\n", " ")
    assert nasty in text
    assert short in text
    assert "<b>Very</b> long & winding" in text and "<br/> Road" in text


def test_a_credit_note_names_itself_and_the_invoice_it_credits() -> None:
    text = text_of(render_credit_note_pdf(credit_note(), "INV-2026-000123", SUPPLIER,
                                          UK_CUSTOMER))
    for expected in ("Credit note", "CN-2026-000007", "Credits invoice", "INV-2026-000123",
                     "20 November 2026", "Duplicate usage <batch 7>", "£39.50", "£7.90",
                     "£47.40", "GB123456789", "Acme Widgets & Sons <Ltd>"):
        assert expected in text, expected
    assert "VAT invoice" not in text


def test_three_hundred_lines_paginate_with_every_line_printed() -> None:
    lines = [line(f"Usage line {n:03d}", quantity=n + 1, net="1.00", vat="0.20")
             for n in range(300)]
    pdf = render_invoice_pdf(uk_invoice(lines=lines), SUPPLIER, UK_CUSTOMER)
    pages = pages_of(pdf)
    assert pages >= 5
    text = text_of(pdf)
    assert all(f"Usage line {n:03d}" in text for n in range(300))
    # The column header and the document number repeat on every page.
    assert text.count("Unit price") == pages
    assert f"INV-2026-000123 · page {pages}" in text


def test_the_same_document_renders_to_the_same_bytes() -> None:
    first = render_invoice_pdf(uk_invoice(), SUPPLIER, UK_CUSTOMER)
    second = render_invoice_pdf(uk_invoice(), SUPPLIER, UK_CUSTOMER)
    assert first == second
    assert document_sha256(first) == document_sha256(second)
    other = render_invoice_pdf(uk_invoice(amount_paid="0.00", amount_due="574.80"),
                               SUPPLIER, UK_CUSTOMER)
    assert document_sha256(other) != document_sha256(first)
    notes = [render_credit_note_pdf(credit_note(), "INV-2026-000123", SUPPLIER, UK_CUSTOMER)
             for _ in range(2)]
    assert notes[0] == notes[1]


def test_documents_use_the_font_inside_reportlab_so_bytes_do_not_depend_on_the_machine(
) -> None:
    pdf = render_invoice_pdf(uk_invoice(), SUPPLIER, DE_BUSINESS)
    assert b"BitstreamVeraSans" in pdf and b"DejaVu" not in pdf


def test_a_name_the_bundled_font_cannot_draw_is_drawn_with_dejavu_when_present() -> None:
    if pdf_fonts._wide_fonts() is None:
        pytest.skip("no DejaVu Sans on this machine: Vera draws what it can")
    customer = Party(name="Ромашка Лтд", address_lines=("Őrség utca 1",), country="HU",
                     vat_number="HU12345678")
    pdf = render_invoice_pdf(uk_invoice(), SUPPLIER, customer)
    assert b"DejaVu" in pdf
    text = text_of(pdf)
    assert "Ромашка Лтд" in text and "Őrség utca 1" in text and "£574.80" in text


def test_document_sha256_is_the_hex_sha256_of_the_bytes() -> None:
    assert document_sha256(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


@pytest.mark.parametrize(("amount", "currency", "shown"), [
    ("1234.5", "GBP", "£1,234.50"), ("0.0395", "GBP", "£0.0395"), ("50", "EUR", "€50.00"),
    ("1000000.00", "USD", "$1,000,000.00"), ("0", "GBP", "£0.00"),
])
def test_amounts_are_printed_exactly_with_their_currency(amount: str, currency: str,
                                                         shown: str) -> None:
    assert money(amount, currency) == shown


@pytest.mark.parametrize("changes", [
    {"name": " "}, {"country": "gb"}, {"country": "GBR"}, {"address_lines": ("x",) * 7},
    {"vat_number": "G" * 201},
])
def test_a_party_that_cannot_be_printed_is_refused(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": "A", "address_lines": ("1 Road",), "country": "GB"}
    fields.update(changes)
    with pytest.raises(PartyError):
        Party(**fields)  # type: ignore[arg-type]
