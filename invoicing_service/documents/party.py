"""The supplier and the customer as a VAT invoice names them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Six lines hold any postal address (building, street, locality, town, region, postcode).
ADDRESS_LINES_MAX: Final = 6
TEXT_CHARS_MAX: Final = 200
_COUNTRY = re.compile(r"[A-Z]{2}")


class PartyError(ValueError):
    """A party that cannot be printed on a VAT invoice as given."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """Name and address as printed; `country` is ISO 3166-1 alpha-2 (GB for the UK)."""

    name: str
    address_lines: tuple[str, ...]
    country: str
    vat_number: str | None = None
    email: str | None = None
    po_number: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise PartyError("a party needs a name")
        if not _COUNTRY.fullmatch(self.country):
            raise PartyError(f"country must be ISO 3166-1 alpha-2 in capitals: {self.country!r}")
        if len(self.address_lines) > ADDRESS_LINES_MAX:
            raise PartyError(f"at most {ADDRESS_LINES_MAX} address lines")
        texts = (self.name, *self.address_lines, self.vat_number or "", self.email or "",
                 self.po_number or "")
        if any(len(text) > TEXT_CHARS_MAX for text in texts):
            raise PartyError(f"a party's name, address lines and numbers hold at most "
                             f"{TEXT_CHARS_MAX} characters each")

    @property
    def is_uk(self) -> bool:
        # GB and XI (Northern Ireland) are both inside UK VAT.
        return self.country in ("GB", "XI")


@dataclass(frozen=True, slots=True, kw_only=True)
class SterlingVat:
    """The VAT of a document invoiced in another currency, in sterling: HMRC asks for the
    total VAT in sterling on every VAT invoice. The caller converts (at the rate it chose:
    HMRC's period rate or a market rate on the tax point) and says which rate it used."""

    vat_amount: str  # GBP, a decimal string
    exchange_rate: str  # GBP per unit of the document's currency, e.g. "0.8531"
    rate_source: str  # e.g. "HMRC period rate, November 2026"

    def __post_init__(self) -> None:
        if len(self.rate_source) > TEXT_CHARS_MAX or not self.rate_source.strip():
            raise PartyError("a sterling conversion names its rate's source")
