"""The price catalogue as an event-sourced aggregate: every replacement is an event, so the
price in force at any instant can be shown, and the debit events record the unit price used.

Seeded from catalog_default.json the first time the ledger starts; replaced by
`catalog.v1.prices_updated` (from sync, or an operator). The same version twice changes
nothing.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate

from ledger_service.domain.naming import name_events
from ledger_service.domain.pricing import DEFAULT_CATALOG_RESOURCE, PriceCatalog

CATALOGUE_ID: UUID = uuid5(NAMESPACE_URL, "https://billing.example/ledger/price-catalogue")


class Catalogue(Aggregate):
    class Replaced(Aggregate.Event):
        version: str
        products: list[dict[str, Any]]
        actor: str

        def apply(self, aggregate: Any) -> None:
            aggregate.catalogue_version = self.version
            aggregate.products = self.products

    class Seeded(Aggregate.Created):
        version: str
        products: list[dict[str, Any]]

    def __init__(self, version: str, products: list[dict[str, Any]]) -> None:
        self.catalogue_version = version
        self.products = products

    @classmethod
    def from_default(cls, now: datetime) -> Catalogue:
        raw = resources.files("ledger_service").joinpath(DEFAULT_CATALOG_RESOURCE).read_bytes()
        data = msgspec.json.decode(raw)
        PriceCatalog.from_message(data)  # validate before recording anything
        return cls._create(cls.Seeded, id=CATALOGUE_ID, timestamp=now,
                           version=data["version"], products=data["products"])

    def replace(self, version: str, products: list[dict[str, Any]], actor: str,
                now: datetime) -> bool:
        if version == self.catalogue_version:
            return False
        PriceCatalog.from_message({"version": version, "products": products})  # raises
        self.trigger_event(self.Replaced, timestamp=now, version=version, products=products,
                           actor=actor)
        return True

    def price_catalog(self) -> PriceCatalog:
        return PriceCatalog.from_message(
            {"version": self.catalogue_version, "products": self.products})


name_events({"ledger.catalogue.Replaced": Catalogue.Replaced,
             "ledger.catalogue.Seeded": Catalogue.Seeded})
