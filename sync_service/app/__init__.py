"""Use cases of the sync service, bundled for the HTTP layer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sync_service.app.connections import XeroConnections
from sync_service.app.hubspot_catalog import HubSpotCatalogue
from sync_service.app.mappings import MappingBook
from sync_service.app.queue import SyncQueue
from sync_service.app.status import SyncStatusReader
from sync_service.app.xero_webhooks import XeroWebhooks


@dataclass(frozen=True, slots=True)
class SyncApp:
    connections: XeroConnections
    webhooks: XeroWebhooks
    status: SyncStatusReader
    queue: SyncQueue
    mappings: MappingBook
    wake: Callable[[], None]
    hubspot_catalogue: HubSpotCatalogue | None = None
