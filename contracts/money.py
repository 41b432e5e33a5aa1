"""Money on the wire and in the domain.

The wire carries decimal strings with at most 6 places plus an ISO 4217 code; the domain and
the event store carry integer micro-units (10^-6 of the major unit). Conversion is exact in
both directions: a string with more than 6 places is rejected, never rounded, because a
silent rounding here would be an untraceable difference in a balance.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec

MICROS_PER_UNIT: Final = 1_000_000
# A bound on every amount: 10^12 major units is far beyond any real balance, and it keeps
# every product of amount and quantity inside a signed 64-bit integer in PostgreSQL.
AMOUNT_MAJOR_MAX: Final = 10**12
# The largest amount the wire format (at most 12 integer digits) can carry: every amount the
# ledger accepts can be written out and read back.
AMOUNT_MICROS_MAX: Final = AMOUNT_MAJOR_MAX * MICROS_PER_UNIT - 1

Currency = Literal["GBP", "EUR", "USD"]
CURRENCIES: Final[tuple[str, ...]] = ("GBP", "EUR", "USD")

# Python's `$` also matches before a trailing newline ("12.5\n" would pass); `$(?!\n)` means
# end of string both in Python and in ECMA-262, the regex dialect of the exported JSON Schema.
# At most 12 integer digits: the wire never carries an amount that to_micros would refuse.
_AMOUNT_PATTERN: Final = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$(?!\n)"
_SIGNED_AMOUNT_PATTERN: Final = r"^-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$(?!\n)"
# Zero is excluded by a look-ahead so that "0", "0.0" and "0.000000" are all refused.
_POSITIVE_AMOUNT_PATTERN: Final = r"^(?!0+(\.0+)?$)(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$(?!\n)"

Amount = Annotated[
    str,
    msgspec.Meta(
        pattern=_AMOUNT_PATTERN,
        description="Non-negative decimal string, at most 6 decimal places, e.g. \"12.3450\"",
        examples=["12.3450"],
    ),
]
PositiveAmount = Annotated[
    str,
    msgspec.Meta(
        pattern=_POSITIVE_AMOUNT_PATTERN,
        description="Decimal string greater than zero, at most 6 decimal places",
        examples=["25.00"],
    ),
]
SignedAmount = Annotated[
    str,
    msgspec.Meta(
        pattern=_SIGNED_AMOUNT_PATTERN,
        description="Decimal string, may be negative, at most 6 decimal places",
        examples=["-3.50"],
    ),
]

_signed_re = re.compile(_SIGNED_AMOUNT_PATTERN)


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in micro-units."""


class Money(msgspec.Struct, frozen=True, kw_only=True):
    amount: SignedAmount
    currency: Currency

    @property
    def micros(self) -> int:
        return to_micros(self.amount)

    @classmethod
    def of_micros(cls, micros: int, currency: Currency) -> Money:
        return cls(amount=format_micros(micros), currency=currency)


def to_micros(amount: str | Decimal | int) -> int:
    """Parse an exact decimal amount into integer micro-units.

    Strings must match the wire pattern; Decimals must have at most 6 places. Floats are not
    accepted anywhere, by type and at run time.
    """
    if isinstance(amount, (bool, float)):
        raise MoneyError("amounts are never floats")
    if isinstance(amount, int):
        micros = amount * MICROS_PER_UNIT
    elif isinstance(amount, Decimal):
        if not amount.is_finite():
            raise MoneyError(f"not a finite amount: {amount}")
        scaled = amount * MICROS_PER_UNIT
        if scaled != scaled.to_integral_value():
            raise MoneyError(f"more than 6 decimal places: {amount}")
        micros = int(scaled)
    elif isinstance(amount, str):
        if not _signed_re.fullmatch(amount):
            raise MoneyError(f"not a decimal amount with at most 6 places: {amount!r}")
        negative = amount.startswith("-")
        whole, _, frac = amount.lstrip("-").partition(".")
        micros = int(whole) * MICROS_PER_UNIT + int(frac.ljust(6, "0") or "0")
        micros = -micros if negative else micros
    else:
        raise MoneyError(f"unsupported amount type: {type(amount).__name__}")
    if abs(micros) > AMOUNT_MICROS_MAX:
        raise MoneyError(f"amount beyond the {AMOUNT_MAJOR_MAX} limit: {amount}")
    return micros


def format_micros(micros: int) -> str:
    """Render micro-units as a decimal string: at least 2 places, at most 6, no float.

    100_000_000 -> "100.00"; 39_500 -> "0.0395"; -1_234_500 -> "-1.2345".
    """
    if type(micros) is not int and (isinstance(micros, bool) or not isinstance(micros, int)):
        raise MoneyError(f"micros must be an int, got {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(-micros if micros < 0 else micros, MICROS_PER_UNIT)
    if frac % 10_000 == 0:  # whole pence or cents, most amounts: no trimming to do
        return f"{sign}{whole}.{frac // 10_000:02d}"
    return f"{sign}{whole}.{f'{frac:06d}'.rstrip('0')}"


def micros_to_minor_units(micros: int, minor_places: int = 2) -> int:
    """Round micro-units to minor units (pence, cents), half away from zero.

    The one rounding rule of the project: used only where an invoice or a payment provider
    needs minor units. Half away from zero matches HMRC's guidance for VAT per line and
    Stripe's integer amounts.
    """
    step = 10 ** (6 - minor_places)
    whole, rest = divmod(abs(micros), step)
    if rest * 2 >= step:
        whole += 1
    return -whole if micros < 0 else whole


def minor_units_to_micros(minor: int, minor_places: int = 2) -> int:
    return minor * 10 ** (6 - minor_places)
