"""Wiring of the sync service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from services.outbox import OutboxRelay, jetstream_publisher
from services.runtime import Runtime, ServiceParts, ServiceSpec
from sync_service.app import SyncApp
from sync_service.app.connections import XeroConnections
from sync_service.app.credentials import load_key_ring
from sync_service.app.grants import Grants
from sync_service.app.hubspot_catalog import HubSpotCatalogue
from sync_service.app.mappings import MappingBook
from sync_service.app.pacing import Limits, Pacer
from sync_service.app.pusher import OUTBOX_CHANNEL, XeroPusher
from sync_service.app.queue import SyncQueue
from sync_service.app.scheduler import Scheduler
from sync_service.app.status import SyncStatusReader
from sync_service.app.xero_api import XeroClient
from sync_service.app.xero_webhooks import XeroWebhooks
from sync_service.domain.catalogue import PropertyNames
from sync_service.http import EXCEPTION_STATUSES, create_router
from sync_service.messaging import subscribe
from sync_service.settings import SyncSettings


def build(runtime: Runtime) -> ServiceParts:
    settings = runtime.settings
    assert isinstance(settings, SyncSettings)
    keys = load_key_ring(settings)
    relay = OutboxRelay(
        runtime.pool,
        jetstream_publisher(lambda: runtime.broker.connection),
        channel=OUTBOX_CHANNEL,
        poll_interval_s=settings.outbox_poll_interval_s,
        name="sync-outbox",
    )
    queue = SyncQueue(runtime.pool, lease_s=settings.lease_s, attempts_max=settings.attempts_max,
                      wait_initial_s=settings.retry_wait_initial_s,
                      wait_max_s=settings.retry_wait_max_s)
    xero: XeroClient | None = None
    grants: Grants | None = None
    scheduler: Scheduler | None = None
    if settings.xero_client_id:
        pacer = Pacer(Limits(calls_per_window=settings.xero_calls_per_minute,
                             window_s=settings.xero_minute_s,
                             calls_per_day=settings.xero_calls_per_day,
                             concurrent_max=settings.xero_concurrent_max,
                             share=settings.xero_pacing_share))
        xero = XeroClient(
            client_id=settings.xero_client_id, client_secret=settings.xero_client_secret,
            redirect_uri=settings.xero_redirect_uri, scopes=settings.xero_scopes,
            login_base=settings.xero_login_base, identity_base=settings.xero_identity_base,
            api_base=settings.xero_api_base, timeout_s=settings.xero_timeout_s, pacer=pacer)
        grants = Grants(runtime.pool, keys, xero, refresh_margin_s=settings.xero_refresh_margin_s)
        pusher = XeroPusher(runtime.pool, xero, grants, queue,
                            payment_account_code=settings.xero_payment_account_code,
                            sales_account_code=settings.xero_sales_account_code,
                            on_announce=relay.wake)
        scheduler = Scheduler(queue, pusher, pacer, workers_per_connection=settings.xero_concurrent_max,
                              poll_interval_s=settings.poll_interval_s)

    catalogue: HubSpotCatalogue | None = None
    if settings.hubspot_access_token:
        catalogue = HubSpotCatalogue(
            runtime.pool, base_url=settings.hubspot_api_base,
            access_token=settings.hubspot_access_token,
            pacer=Pacer(Limits(calls_per_window=settings.hubspot_calls_per_window,
                               window_s=settings.hubspot_window_s, calls_per_day=250_000,
                               concurrent_max=4, share=settings.xero_pacing_share)),
            names=PropertyNames(key=settings.hubspot_product_key_property,
                                tier=settings.hubspot_tier_property),
            interval_s=settings.hubspot_catalog_interval_s, timeout_s=settings.hubspot_timeout_s,
            outbox_channel=OUTBOX_CHANNEL, on_publish=relay.wake)

    def wake() -> None:
        if scheduler is not None:
            scheduler.wake()

    sync = SyncApp(
        connections=XeroConnections(runtime.pool, keys, xero, grants, on_connected=wake),
        webhooks=XeroWebhooks(runtime.pool, settings.xero_webhook_key, on_queued=wake),
        status=SyncStatusReader(runtime.pool, xero_configured=settings.xero_configured,
                                hubspot_configured=catalogue is not None),
        queue=queue,
        mappings=MappingBook(runtime.pool),
        wake=wake,
        hubspot_catalogue=catalogue,
    )
    subscribe(runtime.broker, runtime.pool, wake)

    async def start(_: Runtime) -> None:
        await relay.start()
        if scheduler is not None:
            await scheduler.start()
        if catalogue is not None:
            await catalogue.start()

    async def stop(_: Runtime) -> None:
        if scheduler is not None:
            await scheduler.stop()
        if catalogue is not None:
            await catalogue.stop()
        await relay.stop()
        if xero is not None:
            await xero.aclose()

    return ServiceParts(
        route_handlers=[create_router(sync)],
        exception_statuses=EXCEPTION_STATUSES,
        on_startup=[start],
        on_shutdown=[stop],
    )


SPEC = ServiceSpec(
    name="sync_service",
    title="Sync service",
    version="0.1.0",
    schema="sync",
    http_port_default=8004,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=SyncSettings,
)
