"""Our invoices, credit notes and payments as Xero documents: pure functions of the message
and the operator's mappings.

Amounts: ours are micro-units; Xero keeps line and document amounts to 2 decimal places and a
unit price to 4 (with ``unitdp=4``). A line whose unit price needs more places, or whose
quantity times unit price does not give our net amount to the cent, goes as quantity 1 at its
net amount (Lago PR #3396). Each line carries its VAT as `TaxAmount`, and the rounding
remainder of the document's net and VAT is put on its largest line, so Xero's totals are ours
to the cent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from contracts.invoicing import CreditNoteIssued, InvoiceIssued, InvoiceLine
from contracts.money import to_micros

CENT: Final = Decimal("0.01")
UNIT_PLACES_MAX: Final = 4
IDEMPOTENCY_KEY_CHARS: Final = 64  # Xero accepts up to 128
CONTACT_NAME_PREFIX: Final = "Billing account "
ANY: Final = "*"

# VAT treatment (and rate) -> Xero TaxType, shared/reference/external-apis.md §3.6 and §4.
DEFAULT_TAX_TYPES: Final[dict[tuple[str, str], str]] = {
    ("standard", "20"): "OUTPUT2",
    ("standard", "5"): "RROUTPUT",
    ("standard", ANY): "OUTPUT2",
    ("zero_rated", ANY): "ZERORATEDOUTPUT",
    ("reverse_charge", ANY): "ZERORATEDOUTPUT",
    ("exempt", ANY): "EXEMPTOUTPUT",
    ("outside_scope", ANY): "NONE",
}


@dataclass(frozen=True, slots=True)
class ProductMapping:
    item_code: str | None = None
    account_code: str | None = None
    tax_type: str | None = None


@dataclass(frozen=True, slots=True)
class Mappings:
    """What an operator set for one connection, fallbacks already folded in by the reader:
    `products` by product key ('*' the fallback), `tax_types` by (treatment, rate or '*')."""

    products: Mapping[str, ProductMapping]
    tax_types: Mapping[tuple[str, str], str]
    sales_account_code: str

    def for_product(self, product: str | None) -> ProductMapping:
        found = self.products.get(product or ANY) or self.products.get(ANY) or ProductMapping()
        fallback = self.products.get(ANY) or ProductMapping()
        return ProductMapping(
            item_code=found.item_code or fallback.item_code,
            account_code=found.account_code or fallback.account_code or self.sales_account_code,
            tax_type=found.tax_type,
        )

    def tax_type(self, treatment: str, rate: str) -> str:
        rate = _normal_rate(rate)
        for key in ((treatment, rate), (treatment, ANY)):
            if key in self.tax_types:
                return self.tax_types[key]
        for key in ((treatment, rate), (treatment, ANY)):
            if key in DEFAULT_TAX_TYPES:
                return DEFAULT_TAX_TYPES[key]
        return "NONE"


def _normal_rate(rate: str) -> str:
    value = Decimal(rate).normalize()
    return format(value, "f")


def idempotency_key(kind: str, connection_id: str, our_id: str) -> str:
    """Stable per document and organisation, within Xero's 128 characters."""
    digest = hashlib.sha256(f"{kind}\x00{connection_id}\x00{our_id}".encode()).hexdigest()
    return f"{kind[:12]}-{digest[:IDEMPOTENCY_KEY_CHARS - 13]}"


def contact_number(account_id: object) -> str:
    return str(account_id)


CONTACT_NAME_MAX: Final = 255
ADDRESS_LINES_MAX: Final = 4  # Xero's AddressLine1..4
ADDRESS_LINE_MAX: Final = 500
COUNTRY_MAX: Final = 50
TAX_NUMBER_MAX: Final = 50
NAME_TAKEN: Final = "already assigned to another contact"


def contact_name(account_id: object, customer: Mapping[str, Any] | None,
                 disambiguate: bool = False) -> str:
    """The customer's legal name (the billing profile's), else a placeholder naming the
    account. Names are unique in a Xero organisation: a second customer with the same name is
    told apart by its account id (`disambiguate`)."""
    if customer is None:
        return f"{CONTACT_NAME_PREFIX}{account_id}"
    name = str(customer["legal_name"])
    if disambiguate:
        suffix = f" ({contact_number(account_id)})"
        return name[: CONTACT_NAME_MAX - len(suffix)] + suffix
    return name[:CONTACT_NAME_MAX]


def contact_details(account_id: object, customer: Mapping[str, Any] | None,
                    disambiguate: bool = False) -> dict[str, Any]:
    """Name, email, VAT number and postal address of a contact (create and update alike)."""
    details: dict[str, Any] = {"Name": contact_name(account_id, customer, disambiguate)}
    if customer is None:
        return details
    if customer.get("billing_email"):
        details["EmailAddress"] = customer["billing_email"]
    if customer.get("vat_number"):
        details["TaxNumber"] = str(customer["vat_number"])[:TAX_NUMBER_MAX]
    lines = [str(line) for line in customer.get("address_lines") or []]
    if len(lines) > ADDRESS_LINES_MAX:  # the rest joined on the last line Xero has
        lines = [*lines[: ADDRESS_LINES_MAX - 1], ", ".join(lines[ADDRESS_LINES_MAX - 1:])]
    address: dict[str, Any] = {"AddressType": "POBOX"}  # Xero's postal (billing) address
    for index, line in enumerate(lines, start=1):
        address[f"AddressLine{index}"] = line[:ADDRESS_LINE_MAX]
    if customer.get("country"):
        address["Country"] = str(customer["country"])[:COUNTRY_MAX]
    if len(address) > 1:
        details["Addresses"] = [address]
    return details


def contact_payload(account_id: object, customer: Mapping[str, Any] | None = None,
                    disambiguate: bool = False) -> dict[str, Any]:
    # The accountant may rename it; we find it by ContactNumber, never by name.
    return {**contact_details(account_id, customer, disambiguate),
            "ContactNumber": contact_number(account_id)}


def name_taken(error: Exception) -> bool:
    """Xero refused a contact because another has its name."""
    return NAME_TAKEN in str(error)


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros).scaleb(-6)


def cents(micros: int) -> Decimal:
    return micros_to_decimal(micros).quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: Decimal) -> str:
    return format(value.quantize(CENT), "f")


def _line_items(lines: Sequence[InvoiceLine], mappings: Mappings, subtotal_micros: int,
                vat_total_micros: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    nets: list[Decimal] = []
    taxes: list[Decimal] = []
    for line in lines:
        mapping = mappings.for_product(line.product)
        unit = micros_to_decimal(to_micros(line.unit_price)).normalize()
        net = cents(to_micros(line.net_amount))
        quantity = Decimal(line.quantity)
        exact = (-unit.as_tuple().exponent <= UNIT_PLACES_MAX  # type: ignore[operator]
                 and (quantity * unit).quantize(CENT, rounding=ROUND_HALF_UP) == net)
        item: dict[str, Any] = {
            "Description": line.description,
            "Quantity": str(quantity) if exact else "1",
            "UnitAmount": format(unit, "f") if exact else money(net),
            "AccountCode": mapping.account_code,
            "TaxType": mapping.tax_type or mappings.tax_type(line.vat_treatment, line.vat_rate),
        }
        if mapping.item_code:
            item["ItemCode"] = mapping.item_code
        items.append(item)
        nets.append(net)
        taxes.append(cents(to_micros(line.vat_amount)))
    if not items:
        return items
    largest = max(range(len(items)), key=lambda i: nets[i])
    net_gap = cents(subtotal_micros) - sum(nets, Decimal(0))
    if net_gap:
        nets[largest] += net_gap
        items[largest]["Quantity"] = "1"
        items[largest]["UnitAmount"] = money(nets[largest])
    taxes[largest] += cents(vat_total_micros) - sum(taxes, Decimal(0))
    for item, tax in zip(items, taxes, strict=True):
        item["TaxAmount"] = money(tax)
    return items


def _date(moment: datetime) -> str:
    return moment.date().isoformat()


def invoice_payload(invoice: InvoiceIssued, contact_id: str, mappings: Mappings
                    ) -> dict[str, Any]:
    return {
        "Type": "ACCREC",
        "Status": "AUTHORISED",
        "Contact": {"ContactID": contact_id},
        "InvoiceNumber": invoice.number,
        "Reference": invoice.period or invoice.invoice_id,
        "CurrencyCode": invoice.currency,
        "Date": _date(invoice.issued_at),
        "DueDate": _date(invoice.due_at),
        "LineAmountTypes": "Exclusive",
        "LineItems": _line_items(invoice.lines, mappings, to_micros(invoice.subtotal),
                                 to_micros(invoice.vat_total)),
    }


def credit_note_payload(note: CreditNoteIssued, contact_id: str, mappings: Mappings
                        ) -> dict[str, Any]:
    return {
        "Type": "ACCRECCREDIT",
        "Status": "AUTHORISED",
        "Contact": {"ContactID": contact_id},
        "CreditNoteNumber": note.number,
        "Reference": note.reason[:255],
        "CurrencyCode": note.currency,
        "Date": _date(note.issued_at),
        "LineAmountTypes": "Exclusive",
        "LineItems": _line_items(note.lines, mappings, to_micros(note.subtotal),
                                 to_micros(note.vat_total)),
    }


def allocation_payload(invoice_xero_id: str, amount_micros: int, on: datetime) -> dict[str, Any]:
    return {"Allocations": [{"Invoice": {"InvoiceID": invoice_xero_id},
                             "Amount": money(cents(amount_micros)), "Date": _date(on)}]}


def payment_cents(net_micros: int, vat_micros: int, *, invoice_subtotal_micros: int | None,
                  invoice_vat_micros: int | None) -> Decimal:
    """What a payment is in Xero: its net and VAT each to the cent, as the invoice's lines
    were, so that paying an invoice in full pays exactly Xero's total; never more than it."""
    amount = cents(net_micros) + cents(vat_micros)
    if invoice_subtotal_micros is not None and invoice_vat_micros is not None:
        amount = min(amount, cents(invoice_subtotal_micros) + cents(invoice_vat_micros))
    return amount


def payment_payload(*, invoice_xero_id: str, account_code: str, amount: Decimal,
                    reference: str, on: datetime) -> dict[str, Any]:
    return {"Invoice": {"InvoiceID": invoice_xero_id}, "Account": {"Code": account_code},
            "Date": _date(on), "Amount": money(amount), "Reference": reference}


def split_gross(gross_micros: int, total_micros: int, vat_total_micros: int) -> tuple[int, int]:
    """(net, vat) of a payment of `gross_micros` against an invoice, VAT in proportion."""
    if total_micros <= 0 or vat_total_micros <= 0:
        return gross_micros, 0
    vat = (gross_micros * vat_total_micros * 2 + total_micros) // (total_micros * 2)
    return gross_micros - vat, vat


def decimal_to_micros(value: object) -> int:
    """A Xero JSON number (float or string) as micro-units, through its decimal text."""
    return to_micros(Decimal(str(value)).quantize(Decimal("0.000001")))
