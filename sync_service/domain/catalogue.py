"""HubSpot products as our price list: validated row by row, identified by their content.

A product row needs our product key, its SKU, a tier and at least one price
(`hs_price_gbp`, `hs_price_eur`, `hs_price_usd`, decimal strings of at most 6 places). A row
that fails is left out and reported, never guessed at; two rows for one (key, tier) are both
left out, since which one wins would depend on HubSpot's order. The content hash is taken
over the sorted, normalised list, so the same catalogue read twice is the same hash.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import msgspec

from contracts.catalog import ProductPrice, Tier
from contracts.money import MoneyError, format_micros, to_micros

PRICE_PROPERTIES: Final = {"GBP": "hs_price_gbp", "EUR": "hs_price_eur", "USD": "hs_price_usd"}
TIERS: Final = ("starter", "enterprise", "bespoke")
_PRODUCT_KEY: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SKU: Final = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True, slots=True)
class PropertyNames:
    key: str = "billing_product_key"
    tier: str = "billing_tier"
    sku: str = "hs_sku"
    name: str = "name"

    def wanted(self) -> list[str]:
        return [self.key, self.tier, self.sku, self.name, *PRICE_PROPERTIES.values()]


@dataclass(frozen=True, slots=True)
class Catalogue:
    products: list[ProductPrice]
    rejected: list[str]  # "<hubspot id>: why"

    @property
    def content_hash(self) -> str:
        ordered = sorted(self.products, key=lambda p: (p.key, p.tier))
        return hashlib.sha256(msgspec.json.encode(ordered)).hexdigest()


def read_catalogue(rows: Sequence[Mapping[str, Any]], names: PropertyNames) -> Catalogue:
    products: list[tuple[str, ProductPrice]] = []
    rejected: list[str] = []
    for row in rows:
        product_id = str(row.get("id", "?"))
        try:
            products.append((product_id, _product(row.get("properties") or {}, names)))
        except ValueError as exc:
            rejected.append(f"{product_id}: {exc}")
    counts = Counter((p.key, p.tier) for _, p in products)
    for product_id, price in products:
        if counts[(price.key, price.tier)] > 1:
            rejected.append(f"{product_id}: {price.key}/{price.tier} appears more than once")
    kept = [p for _, p in products if counts[(p.key, p.tier)] == 1]
    return Catalogue(products=sorted(kept, key=lambda p: (p.key, p.tier)), rejected=rejected)


def _product(properties: Mapping[str, Any], names: PropertyNames) -> ProductPrice:
    key = str(properties.get(names.key) or "").strip()
    if not _PRODUCT_KEY.fullmatch(key):
        raise ValueError(f"{names.key} {key!r} is not a product key")
    sku = str(properties.get(names.sku) or "").strip()
    if not _SKU.fullmatch(sku):
        raise ValueError(f"{names.sku} missing or not visible ASCII")
    tier = str(properties.get(names.tier) or "").strip().lower()
    if tier not in TIERS:
        raise ValueError(f"{names.tier} {tier!r} is not one of {', '.join(TIERS)}")
    prices: dict[str, str] = {}
    for currency, prop in PRICE_PROPERTIES.items():
        raw = properties.get(prop)
        if raw in (None, ""):
            continue
        try:
            micros = to_micros(str(raw).strip())
        except MoneyError:
            raise ValueError(f"{prop} {raw!r} is not a decimal amount") from None
        if micros < 0:
            raise ValueError(f"{prop} is negative")
        prices[currency] = format_micros(micros)
    if not prices:
        raise ValueError("no price in any currency")
    name = str(properties.get(names.name) or "")[:200] or None
    return ProductPrice(key=key, sku=sku, tier=cast(Tier, tier),
                        unit_prices=prices,  # type: ignore[arg-type]
                        name=name)


def version_of(content_hash: str, at: datetime) -> str:
    """Unique per publication (a list that changes back is a new version), readable."""
    return f"hubspot-{at.strftime('%Y%m%dT%H%M%S')}Z-{content_hash[:12]}"
