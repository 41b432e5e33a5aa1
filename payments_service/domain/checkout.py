"""What a checkout charges, and whether a completed session is one we created.

Amounts here are integers: micro-units where they come from the wire or an invoice, minor
units (pence, cents) where they go to Stripe. The one rounding rule of the project,
`contracts.money.micros_to_minor_units`, is the only place a fraction is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from uuid import UUID

from contracts.money import format_micros, micros_to_minor_units, minor_units_to_micros
from payments_service.domain.errors import (
    AmountNotPayable,
    InvoiceNotPayable,
    TaxProfileInvalid,
    TopUpOutOfRange,
)
from payments_service.domain.provider_events import CheckoutSession

# UK standard rate (VAT Notice 741A); basis points keep the arithmetic in integers.
UK_STANDARD_VAT_RATE_BP: Final = 2_000
BASIS_POINTS: Final = 10_000
# GBP, EUR and USD all have two decimal places; Stripe charges whole minor units.
MINOR_PLACES: Final = 2
MICROS_PER_MINOR: Final = 10 ** (6 - MINOR_PLACES)
HOME_COUNTRY: Final = "GB"

VatTreatment = Literal["standard", "reverse_charge"]
Purpose = Literal["topup", "invoice"]


@dataclass(frozen=True, slots=True)
class TaxProfile:
    """The account's tax position: where it belongs, its VAT number, reverse charge."""

    country: str = HOME_COUNTRY
    vat_number: str | None = None
    reverse_charge: bool = False


def vat_rate_for(profile: TaxProfile) -> tuple[int, VatTreatment]:
    """(rate in basis points, treatment). Reverse charge applies only to a business outside
    the UK, evidenced by its VAT number; a UK customer is always charged UK VAT."""
    if not profile.reverse_charge:
        return UK_STANDARD_VAT_RATE_BP, "standard"
    if profile.country.upper() == HOME_COUNTRY:
        raise TaxProfileInvalid("reverse charge does not apply to a UK (GB) customer")
    if not profile.vat_number:
        raise TaxProfileInvalid("reverse charge needs the customer's VAT number")
    return 0, "reverse_charge"


@dataclass(frozen=True, slots=True)
class Quote:
    """What one checkout charges: the net amount credited, the VAT on top, in minor units."""

    net_minor: int
    vat_minor: int
    currency: str
    vat_rate_bp: int
    treatment: VatTreatment

    def __post_init__(self) -> None:
        assert self.net_minor > 0 and self.vat_minor >= 0, self

    @property
    def total_minor(self) -> int:
        return self.net_minor + self.vat_minor


def quote_topup(
    amount_micros: int, currency: str, profile: TaxProfile, *, min_micros: int, max_micros: int
) -> Quote:
    """A top-up credits exactly `amount_micros`; VAT is added on its own line."""
    if amount_micros % MICROS_PER_MINOR:
        raise AmountNotPayable("a top-up is charged in whole pence/cents: at most 2 decimal places")
    if not min_micros <= amount_micros <= max_micros:
        raise TopUpOutOfRange(
            f"a top-up must be between {format_micros(min_micros)} and "
            f"{format_micros(max_micros)} {currency}"
        )
    rate_bp, treatment = vat_rate_for(profile)
    # amount_micros is whole minor units, so amount * rate / 10^4 is whole micros: exact.
    vat_micros = amount_micros * rate_bp // BASIS_POINTS
    return Quote(
        net_minor=amount_micros // MICROS_PER_MINOR,
        vat_minor=micros_to_minor_units(vat_micros, MINOR_PLACES),
        currency=currency,
        vat_rate_bp=rate_bp,
        treatment=treatment,
    )


@dataclass(frozen=True, slots=True)
class InvoiceBalance:
    """What is still owed on an invoice, net and VAT apart, in micro-units."""

    net_due_micros: int
    vat_due_micros: int


def quote_invoice(balance: InvoiceBalance, currency: str) -> Quote:
    """An invoice is paid in full: its VAT was fixed when it was issued."""
    total_minor = micros_to_minor_units(balance.net_due_micros + balance.vat_due_micros)
    vat_minor = micros_to_minor_units(balance.vat_due_micros)
    if total_minor <= 0 or vat_minor > total_minor:
        raise InvoiceNotPayable("nothing is left to pay on this invoice")
    return Quote(
        net_minor=total_minor - vat_minor,
        vat_minor=vat_minor,
        currency=currency,
        vat_rate_bp=0,
        treatment="standard",
    )


@dataclass(frozen=True, slots=True)
class CheckoutRecord:
    """A checkout session as this service created it: the only source of truth for what a
    completed session is worth and whom it credits."""

    checkout_id: str
    account_id: UUID
    purpose: Purpose
    invoice_id: str | None
    net_minor: int
    vat_minor: int
    currency: str
    description: str
    stripe_session_id: str | None

    @property
    def total_minor(self) -> int:
        return self.net_minor + self.vat_minor


def session_mismatches(record: CheckoutRecord, session: CheckoutSession) -> list[str]:
    """Every way the provider's session differs from ours; empty when it may be credited.

    Metadata is compared, never believed: we wrote it, so a different value means the session
    was altered or is not ours.
    """
    problems: list[str] = []
    if session.amount_total != record.total_minor:
        problems.append(f"amount_total {session.amount_total} != {record.total_minor}")
    if (session.currency or "").upper() != record.currency:
        problems.append(f"currency {session.currency!r} != {record.currency.lower()!r}")
    if session.mode not in (None, "payment"):
        problems.append(f"mode {session.mode!r} is not payment")
    expected = {
        "account_id": str(record.account_id),
        "checkout_id": record.checkout_id,
        "purpose": record.purpose,
    }
    if record.invoice_id is not None:
        expected["invoice_id"] = record.invoice_id
    for key, value in expected.items():
        if session.metadata.get(key) != value:
            problems.append(f"metadata.{key} {session.metadata.get(key)!r} != {value!r}")
    if session.client_reference_id not in (None, record.checkout_id):
        problems.append(f"client_reference_id {session.client_reference_id!r} is not ours")
    if record.stripe_session_id not in (None, session.id):
        problems.append(f"session {session.id} is not the one recorded for {record.checkout_id}")
    return problems


def minor_to_amount(minor: int) -> str:
    """Minor units on the wire: 12000 -> "120.00"."""
    return format_micros(minor_units_to_micros(minor, MINOR_PLACES))
