"""Which VAT applies to a customer: treatment and rate (documented in docs/invoicing.md).

The supplier is UK VAT-registered and sells A2P messaging (a telecommunication service):

- a customer in the UK (GB, or XI for Northern Ireland) pays UK VAT at the standard 20%;
- a business outside the UK, shown by a VAT number that passes format validation for its
  country (python-stdnum) and, when a VIES check is configured, is not reported invalid,
  self-accounts for VAT: `reverse_charge` at 0%, with the wording on the document;
- anyone else outside the UK (a consumer, or a business without a valid VAT number) is
  `outside_scope` of UK VAT at 0%. For EU consumers this assumes the supplier accounts for
  local VAT elsewhere (non-Union OSS), which this service does not model;
- an operator may set `zero_rated` or `exempt` (or `outside_scope`) on the account's billing
  profile; that wins over everything above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol

from stdnum import get_cc_module
from stdnum.exceptions import ValidationError

Treatment = Literal["standard", "zero_rated", "reverse_charge", "exempt", "outside_scope"]
Exemption = Literal["zero_rated", "exempt", "outside_scope"]

UK_STANDARD_RATE: Final = "20"
UK_COUNTRIES: Final = frozenset({"GB", "XI"})
# What the document must say for each zero treatment (EU art. 226(11a); VAT Regs reg 14).
NOTES: Final[dict[str, str]] = {
    "reverse_charge": "Reverse charge: the customer is liable to account for the VAT.",
    "outside_scope": "Outside the scope of UK VAT.",
    "zero_rated": "Zero-rated supply.",
    "exempt": "Exempt from VAT.",
}
# stdnum names Greece's VAT module by its VAT prefix, not its ISO code.
_STDNUM_COUNTRY: Final = {"GR": "gr", "EL": "gr"}


@dataclass(frozen=True, slots=True)
class TaxProfile:
    """What decides the VAT of an account: the ledger's tax profile and invoicing's override."""

    country: str = "GB"
    vat_number: str | None = None
    exemption: Exemption | None = None


@dataclass(frozen=True, slots=True)
class VatTerms:
    treatment: Treatment
    rate: str  # percent, a decimal string: "20", "0"

    @property
    def note(self) -> str | None:
        return NOTES.get(self.treatment)


class VatNumberCheck(Protocol):
    """A registry check of a VAT number (VIES for EU numbers). True: registered, False:
    reported invalid, None: could not tell (no check configured, service down)."""

    def is_registered(self, country: str, vat_number: str) -> bool | None: ...


class NoRegistryCheck:
    """No registry is consulted: format validation alone decides (the default)."""

    def is_registered(self, country: str, vat_number: str) -> bool | None:
        return None


def has_valid_format(country: str, vat_number: str) -> bool:
    """The VAT number passes python-stdnum's validation for the customer's country."""
    code = _STDNUM_COUNTRY.get(country.upper(), country.lower())
    try:
        module = get_cc_module(code, "vat")
    except (ImportError, ValueError):
        module = None
    if module is None:
        return False  # a country stdnum cannot check: no evidence of business status
    number = vat_number.strip().upper().replace(" ", "")
    try:
        return bool(module.is_valid(number))
    except (ValidationError, ValueError):
        return False


def terms_for(profile: TaxProfile, registry: VatNumberCheck | None = None) -> VatTerms:
    """The VAT treatment and rate of everything billed to this customer."""
    if profile.exemption is not None:
        return VatTerms(profile.exemption, "0")
    country = profile.country.upper()
    if country in UK_COUNTRIES:
        return VatTerms("standard", UK_STANDARD_RATE)
    if profile.vat_number and has_valid_format(country, profile.vat_number):
        registered = (registry or NoRegistryCheck()).is_registered(country, profile.vat_number)
        if registered is not False:
            return VatTerms("reverse_charge", "0")
    return VatTerms("outside_scope", "0")
