"""What a document says, apart from where it says it: amounts, dates, the tax point and the
VAT notes HMRC asks for. Pure functions of the view, so they can be tested without a PDF."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Final

from contracts.invoicing import VatTreatment
from contracts.money import format_micros, to_micros
from invoicing_service.documents.party import Party, SterlingVat

CURRENCY_SYMBOLS: Final = {"GBP": "£", "EUR": "€", "USD": "$"}

# Wording of docs/invoicing-documents.md, from /work/shared/reference/external-apis.md §4:
# a supply to a business outside the UK carries "Reverse charge" (EU VAT Directive art.
# 226(11a)) and says that the customer accounts for the VAT; a UK domestic reverse charge
# names HMRC.
REVERSE_CHARGE_ABROAD: Final = "Reverse charge: the customer is liable to account for the VAT"
REVERSE_CHARGE_DOMESTIC: Final = "Reverse charge: customer to account for VAT to HMRC"
# HMRC: a VAT invoice states the reason for any zero rate or exemption.
TREATMENT_NOTES: Final[dict[VatTreatment, str]] = {
    "zero_rated": "Zero-rated supply (0% VAT)",
    "exempt": "Exempt from VAT",
    "outside_scope": "Outside the scope of UK VAT",
}
TREATMENT_LABELS: Final[dict[VatTreatment, str]] = {
    "standard": "Standard",
    "zero_rated": "Zero-rated",
    "reverse_charge": "Reverse charge",
    "exempt": "Exempt",
    "outside_scope": "Outside scope",
}


def money(amount: str, currency: str) -> str:
    """ "1234.5" GBP -> "£1,234.50": at least 2 places, more only when the amount has them
    (a unit price of £0.0395 is printed as such, never rounded on the document)."""
    exact = format_micros(to_micros(amount))
    sign = "-" if exact.startswith("-") else ""
    whole, _, frac = exact.lstrip("-").partition(".")
    symbol = CURRENCY_SYMBOLS.get(currency, currency + " ")
    return f"{sign}{symbol}{int(whole):,}.{frac}"


def quantity(value: int) -> str:
    return f"{value:,}"


def rate(vat_rate: str) -> str:
    return f"{vat_rate}%"


def long_date(day: date) -> str:
    # Month names from calendar's C locale table: no locale may change a document's bytes.
    return f"{day.day} {calendar.month_name[day.month]} {day.year}"


def utc_day(instant: datetime) -> date:
    offset = instant.utcoffset() or timedelta(0)
    return (instant.replace(tzinfo=None) - offset).date()


def period_end(period: str) -> date:
    year, month = (int(part) for part in period.split("-"))
    return date(year, month, calendar.monthrange(year, month)[1])


def period_label(period: str) -> str:
    year, month = (int(part) for part in period.split("-"))
    return f"{calendar.month_name[month]} {year}"


def tax_point(period: str | None, issued: date | None) -> date | None:
    """The period's last day for a billing period's invoice, the issue date otherwise."""
    if period is not None:
        return period_end(period)
    return issued


def vat_notes(treatments: Iterable[VatTreatment], customer: Party) -> list[str]:
    """The notes a document must carry for the treatments on it, in a fixed order."""
    present = set(treatments)
    notes: list[str] = []
    if "reverse_charge" in present:
        notes.append(REVERSE_CHARGE_DOMESTIC if customer.is_uk else REVERSE_CHARGE_ABROAD)
    notes.extend(note for treatment, note in TREATMENT_NOTES.items() if treatment in present)
    return notes


def sterling_notes(currency: str, vat_total: str, sterling: SterlingVat | None) -> list[str]:
    """HMRC: the total VAT in sterling, when the document is in another currency and
    charges VAT. Nothing to say for a sterling document or one without VAT."""
    if currency == "GBP" or to_micros(vat_total) == 0 or sterling is None:
        return []
    return [f"VAT in sterling: {money(sterling.vat_amount, 'GBP')} "
            f"(1 {currency} = {sterling.exchange_rate} GBP, {sterling.rate_source})"]
