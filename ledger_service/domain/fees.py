"""Fees: recurring and one-off charges (a number's monthly rental, a keyword's setup fee).

The app prices a fee (catalogue or the account's override, as usage) and the account records
it with the price frozen. A monthly fee may be prorated by days: amount = unit price x
quantity x days / days_in_period, rounded half up to a micro-unit. A setup fee, or a fee
charged whole, has no proration (days None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from contracts.money import AMOUNT_MICROS_MAX
from ledger_service.domain.checks import (
    PRODUCT_LENGTH_MAX,
    REFERENCE_LENGTH_MAX,
    TEXT_LENGTH_MAX,
    is_int,
    is_key,
)
from ledger_service.domain.errors import InvalidAmount, InvalidRequest

FEE_QUANTITY_MAX: Final = 1_000_000
DAYS_IN_PERIOD_MAX: Final = 31
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def prorated_micros(unit_price_micros: int, quantity: int, days: int | None,
                    days_in_period: int | None) -> int:
    """unit x quantity x days / days_in_period, rounded half up (all terms non-negative)."""
    whole = unit_price_micros * quantity
    if days is None or days_in_period is None:
        return whole
    numerator = whole * days
    return (2 * numerator + days_in_period) // (2 * days_in_period)


@dataclass(frozen=True, slots=True)
class FeeCharge:
    charge_key: str  # "recurring:<item_id>:<YYYY-MM | setup>": one charge per key, ever
    product: str
    quantity: int
    unit_price_micros: int
    reference: str | None = None
    period: str | None = None
    days: int | None = None
    days_in_period: int | None = None
    description: str = ""

    @property
    def amount_micros(self) -> int:
        return prorated_micros(self.unit_price_micros, self.quantity, self.days,
                               self.days_in_period)


def check_fee(fee: FeeCharge) -> None:
    """Raise InvalidRequest (or InvalidAmount) for a fee the model cannot record."""
    if not isinstance(fee, FeeCharge):
        raise InvalidRequest("fee must be a FeeCharge")
    if not is_key(fee.charge_key):
        raise InvalidRequest("charge_key must be 1-128 visible ASCII characters")
    if not isinstance(fee.product, str) or not 0 < len(fee.product) <= PRODUCT_LENGTH_MAX:
        raise InvalidRequest("product must be a non-empty key")
    if not is_int(fee.quantity) or not 0 < fee.quantity <= FEE_QUANTITY_MAX:
        raise InvalidRequest(f"quantity must be 1-{FEE_QUANTITY_MAX}")
    if not is_int(fee.unit_price_micros) or fee.unit_price_micros < 0:
        raise InvalidRequest("unit_price_micros must be a non-negative integer")
    if fee.reference is not None and (not isinstance(fee.reference, str)
                                      or len(fee.reference) > REFERENCE_LENGTH_MAX):
        raise InvalidRequest("reference too long")
    if fee.period is not None and (not isinstance(fee.period, str)
                                   or not _PERIOD.fullmatch(fee.period)):
        raise InvalidRequest("period must be YYYY-MM")
    if (fee.days is None) != (fee.days_in_period is None):
        raise InvalidRequest("days and days_in_period go together")
    if fee.days is not None:
        if not is_int(fee.days_in_period) or not 28 <= fee.days_in_period <= DAYS_IN_PERIOD_MAX:  # type: ignore[operator]
            raise InvalidRequest("days_in_period must be 28-31")
        if not is_int(fee.days) or not 1 <= fee.days <= fee.days_in_period:  # type: ignore[operator]
            raise InvalidRequest("days must be 1..days_in_period")
        if fee.period is None:
            raise InvalidRequest("a prorated fee names its period")
    if not isinstance(fee.description, str) or len(fee.description) > TEXT_LENGTH_MAX:
        raise InvalidRequest("description too long")
    if fee.unit_price_micros * fee.quantity > AMOUNT_MICROS_MAX:
        raise InvalidAmount("fee beyond the amount limit")
