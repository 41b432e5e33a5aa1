"""Rating: unit prices by product and tier, per currency, in integer micros.

The catalogue has the shape of `catalog.v1.prices_updated`
(`{version, products: [{key, sku, tier, unit_prices: {GBP: "0.0395", ...}}]}`); prices are
decimal strings parsed exactly (more than 6 places is an error, never a rounding). `bespoke`
accounts pay enterprise prices unless the catalogue lists a bespoke price; per-account
overrides (events on the account) win over both.

The model never prices on replay: the app layer resolves the unit price when the usage arrives
and the debit event records it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from contracts.money import CURRENCIES, MoneyError, to_micros
from ledger_service.domain.errors import InvalidRequest, UnknownProduct

TIERS: Final = ("starter", "enterprise", "bespoke")
# Tier whose price a tier pays when the catalogue has no row for it.
TIER_FALLBACK: Final = {"bespoke": "enterprise"}
DEFAULT_CATALOG_RESOURCE: Final = "catalog_default.json"
PRODUCTS_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class PriceCatalog:
    version: str
    # (product key, tier) -> currency -> unit price in micros
    prices: Mapping[tuple[str, str], Mapping[str, int]]
    skus: Mapping[str, str] = field(default_factory=dict)

    def unit_price_micros(self, product: str, tier: str, currency: str) -> int:
        for looked_up in (tier, TIER_FALLBACK.get(tier)):
            if looked_up is None:
                continue
            row = self.prices.get((product, looked_up))
            if row is not None and currency in row:
                return row[currency]
        raise UnknownProduct(f"no {currency} price for product {product!r} at tier {tier!r}")

    def knows(self, product: str) -> bool:
        return any(key == product for key, _ in self.prices)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> PriceCatalog:
        """Parse the prices_updated shape; any malformed row rejects the whole catalogue."""
        try:
            version = str(message["version"])
            rows = message["products"]
        except (KeyError, TypeError) as e:
            raise InvalidRequest(f"catalogue needs version and products: {e}") from None
        if not isinstance(rows, list) or len(rows) > PRODUCTS_MAX:
            raise InvalidRequest("catalogue products must be a list of bounded length")
        prices: dict[tuple[str, str], dict[str, int]] = {}
        skus: dict[str, str] = {}
        for row in rows:
            key, tier, unit_prices = _parse_row(row)
            if (key, tier) in prices:
                raise InvalidRequest(f"duplicate catalogue row {key}/{tier}")
            prices[(key, tier)] = unit_prices
            if row.get("sku"):
                skus[key] = str(row["sku"])
        return cls(version=version, prices=prices, skus=skus)

    @classmethod
    def from_json(cls, data: bytes | str) -> PriceCatalog:
        try:
            message = json.loads(data)
        except ValueError as e:
            raise InvalidRequest(f"catalogue is not JSON: {e}") from None
        if not isinstance(message, dict):
            raise InvalidRequest("catalogue must be a JSON object")
        return cls.from_message(message)


def _parse_row(row: Any) -> tuple[str, str, dict[str, int]]:
    if not isinstance(row, dict):
        raise InvalidRequest("catalogue row must be an object")
    key, tier, raw_prices = row.get("key"), row.get("tier"), row.get("unit_prices")
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"catalogue row without a product key: {row!r}")
    if tier not in TIERS:
        raise InvalidRequest(f"catalogue row {key}: unknown tier {tier!r}")
    if not isinstance(raw_prices, dict) or not raw_prices:
        raise InvalidRequest(f"catalogue row {key}/{tier}: unit_prices missing")
    unit_prices: dict[str, int] = {}
    for currency, text in raw_prices.items():
        if currency not in CURRENCIES or not isinstance(text, str):
            raise InvalidRequest(f"catalogue row {key}/{tier}: bad price {currency}={text!r}")
        try:
            micros = to_micros(text)
        except MoneyError as e:
            raise InvalidRequest(f"catalogue row {key}/{tier}: {e}") from None
        if micros < 0:
            raise InvalidRequest(f"catalogue row {key}/{tier}: negative price")
        unit_prices[currency] = micros
    return key, str(tier), unit_prices


def load_default_catalog() -> PriceCatalog:
    """The catalogue shipped with the service, used until sync publishes prices_updated.

    The one file this package reads; call it at start-up, never inside a command.
    """
    data = resources.files("ledger_service").joinpath(DEFAULT_CATALOG_RESOURCE).read_bytes()
    return PriceCatalog.from_json(data)


def resolve_unit_price(
    product: str,
    tier: str,
    currency: str,
    overrides: Mapping[str, int],
    catalog: PriceCatalog,
) -> int:
    if product in overrides:
        return overrides[product]
    return catalog.unit_price_micros(product, tier, currency)
