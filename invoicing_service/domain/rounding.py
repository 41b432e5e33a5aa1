"""The one rounding rule of invoices (documented in docs/invoicing.md).

- Each line's net is the exact sum of the ledger's debits it bills (micro-units), rounded
  half away from zero to minor units (pence, cents): `round_to_minor`.
- VAT is computed per (rate, treatment) on the sum of the rounded nets of that group, rounded
  the same way; HMRC accepts either per line or per rate (VAT Notice 700 section 17.5).
- Each line shows its share of its group's VAT, allocated by largest remainder, so the lines'
  VAT always sums to the breakdown and the breakdown to the invoice's VAT total.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from contracts.money import micros_to_minor_units, minor_units_to_micros

MINOR_PLACES: Final = 2  # GBP, EUR and USD all have two
PERCENT: Final = Decimal(100)


def round_to_minor(micros: int) -> int:
    """Micro-units rounded half away from zero to whole minor units, still in micro-units."""
    return minor_units_to_micros(micros_to_minor_units(micros, MINOR_PLACES), MINOR_PLACES)


def vat_on(net_micros: int, rate_percent: str) -> int:
    """VAT on a (rounded) net at a rate in percent, rounded to minor units half-up."""
    rate = Decimal(rate_percent)
    exact = Decimal(net_micros) * rate / PERCENT
    # to whole micro-units first (exact for rates with up to 4 places on whole pence), then pence
    whole = int(exact.to_integral_value(rounding="ROUND_HALF_UP"))
    return round_to_minor(whole)


def allocate(total_micros: int, weights: Sequence[int]) -> list[int]:
    """Split a total of whole minor units over weights, in whole minor units, by largest
    remainder: the parts sum to the total exactly. Zero weights get zero."""
    step = 10 ** (6 - MINOR_PLACES)
    assert total_micros % step == 0, "allocate whole minor units"
    units = total_micros // step
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    shares = [units * w // weight_sum for w in weights]
    remainders = sorted(range(len(weights)),
                        key=lambda i: (-(units * weights[i] % weight_sum), i))
    left = units - sum(shares)
    for i in remainders[:left]:
        shares[i] += 1
    return [s * step for s in shares]
