"""catalog.v1.prices_updated: the price list, from HubSpot via sync or from an operator.

Each message carries the whole catalogue, so a consumer replaces its prices rather than
merging; a consumer that already applied a `version` ignores it when it comes again.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from contracts.ids import KEY_LENGTH_MAX, KEY_PATTERN, ProductKey, Sku
from contracts.money import Amount, Currency
from contracts.text import text_meta
from contracts.timestamps import Timestamp

# Products times tiers; the catalogue has tens of products and a handful of tiers.
CATALOG_PRICES_MAX: Final = 10_000

PriceSource = Literal["hubspot", "operator"]
# The seed spec's tiers; an account on `bespoke` pays enterprise prices unless the catalogue
# has a bespoke row or the account has an override.
Tier = Literal["starter", "enterprise", "bespoke"]

UnitPrices = Annotated[
    dict[Currency, Amount],
    Meta(
        min_length=1,
        max_length=3,
        description="Price of one unit per currency, excluding VAT",
        examples=[{"GBP": "0.0395", "EUR": "0.0450"}],
    ),
]


class ProductPrice(Struct, frozen=True, kw_only=True):
    key: ProductKey
    sku: Sku
    tier: Tier
    unit_prices: UnitPrices
    name: Annotated[str, text_meta(max_length=200)] | None = None


class PricesUpdated(Struct, frozen=True, kw_only=True):
    """The whole price list. Nats-Msg-Id: `version`."""

    version: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=KEY_LENGTH_MAX,
            pattern=KEY_PATTERN,
            description="Identifies this price list; the same version is the same list",
            examples=["hubspot-2026-11-22T09:30:00Z", "default-2026-02-20"],
        ),
    ]
    # Never empty: consumers replace their prices with this list, so [] would wipe them.
    products: Annotated[list[ProductPrice], Meta(min_length=1, max_length=CATALOG_PRICES_MAX)]
    source: PriceSource | None = None
    published_at: Timestamp | None = None

    def __post_init__(self) -> None:
        # Two prices for one product and tier would make the charge depend on list order.
        pairs = {(price.key, price.tier) for price in self.products}
        if len(pairs) != len(self.products):
            raise ValueError("each (key, tier) appears once in products")
