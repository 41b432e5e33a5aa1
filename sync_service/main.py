"""Wiring of the sync service: the one place where its parts meet the kernel."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from services.database import create_pool
from services.outbox import OutboxRelay, jetstream_publisher
from services.runtime import Runtime, ServiceParts, ServiceSpec
from sync_service.app import SyncApp
from sync_service.app.connections import XeroConnections
from sync_service.app.credentials import load_key_ring
from sync_service.app.grants import Grants
from sync_service.app.hubspot_api import BUCKET as HUBSPOT_BUCKET
from sync_service.app.hubspot_api import SEARCH_BUCKET as HUBSPOT_SEARCH_BUCKET
from sync_service.app.hubspot_api import HubSpotClient
from sync_service.app.hubspot_catalog import HubSpotCatalogue
from sync_service.app.hubspot_pusher import CONNECTION_ID as HUBSPOT_CONNECTION
from sync_service.app.hubspot_pusher import HubSpotPusher
from sync_service.app.mappings import MappingBook
from sync_service.app.ownership import LeaseTable, Ownership, member_id
from sync_service.app.pacing import Limits, Pacer, PaceState
from sync_service.app.pusher import OUTBOX_CHANNEL, XeroPusher
from sync_service.app.queue import Job, SyncQueue
from sync_service.app.scheduler import Scheduler
from sync_service.app.status import SyncStatusReader
from sync_service.app.xero_api import XeroClient
from sync_service.app.xero_webhooks import XeroWebhooks
from sync_service.domain.catalogue import PropertyNames
from sync_service.http import EXCEPTION_STATUSES, create_router
from sync_service.messaging import subscribe
from sync_service.settings import SyncSettings

# A change for a target no longer configured looks again this late (it stays in the status).
UNCONFIGURED_RECHECK_S = 60.0
SCHEMA = "sync"
INTAKE_POOL_MAX = 3  # the invoices' group commit uses one; voids, payments, customers the rest


class _Pacing:
    """The pacing state of each connection for its lease row: a Xero organisation's pacer,
    or HubSpot's two (calls, searches)."""

    def __init__(self, xero: Pacer | None, hubspot: HubSpotClient | None) -> None:
        self._xero = xero
        self._hubspot = hubspot

    def _pacers(self, connection_id: str) -> list[tuple[str, Pacer, str]]:
        if connection_id == HUBSPOT_CONNECTION:
            if self._hubspot is None:
                return []
            return [("calls", self._hubspot.pacer, HUBSPOT_BUCKET),
                    ("search", self._hubspot.search_pacer, HUBSPOT_SEARCH_BUCKET)]
        return [] if self._xero is None else [("calls", self._xero, connection_id)]

    def export(self, connection_id: str) -> dict[str, Any]:
        return {name: pacer.export(bucket).to_builtins()
                for name, pacer, bucket in self._pacers(connection_id)}

    def restore(self, connection_id: str, state: dict[str, Any], elapsed_s: float) -> None:
        for name, pacer, bucket in self._pacers(connection_id):
            saved = state.get(name)
            if isinstance(saved, dict):
                pacer.restore(bucket, PaceState.from_builtins(saved), elapsed_s)

    def forget(self, connection_id: str) -> None:
        for _, pacer, bucket in self._pacers(connection_id):
            pacer.forget(bucket)


def build(runtime: Runtime) -> ServiceParts:
    settings = runtime.settings
    assert isinstance(settings, SyncSettings)
    keys = load_key_ring(settings)
    # httpx logs every request at INFO: a line (and its CPU) per Xero or HubSpot call. Ours
    # say what matters: failures, rejections, rate limits, and each change's outcome in status.
    logging.getLogger("httpx").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level)))
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
    xero_pusher: XeroPusher | None = None
    xero_pacer: Pacer | None = None
    if settings.xero_client_id:
        xero_pacer = Pacer(Limits(calls_per_window=settings.xero_calls_per_minute,
                                  window_s=settings.xero_minute_s,
                                  calls_per_day=settings.xero_calls_per_day,
                                  concurrent_max=settings.xero_concurrent_max,
                                  share=settings.xero_pacing_share))
        xero = XeroClient(
            client_id=settings.xero_client_id, client_secret=settings.xero_client_secret,
            redirect_uri=settings.xero_redirect_uri, scopes=settings.xero_scopes,
            login_base=settings.xero_login_base, identity_base=settings.xero_identity_base,
            api_base=settings.xero_api_base, timeout_s=settings.xero_timeout_s,
            pacer=xero_pacer)
        grants = Grants(runtime.pool, keys, xero, refresh_margin_s=settings.xero_refresh_margin_s)
        xero_pusher = XeroPusher(runtime.pool, xero, grants, queue,
                                 payment_account_code=settings.xero_payment_account_code,
                                 sales_account_code=settings.xero_sales_account_code,
                                 on_announce=relay.wake)

    hubspot: HubSpotClient | None = None
    catalogue: HubSpotCatalogue | None = None
    hubspot_pusher: HubSpotPusher | None = None
    if settings.hubspot_access_token:
        hubspot = HubSpotClient(
            base_url=settings.hubspot_api_base, access_token=settings.hubspot_access_token,
            pacer=Pacer(Limits(calls_per_window=settings.hubspot_calls_per_window,
                               window_s=settings.hubspot_window_s, calls_per_day=250_000,
                               concurrent_max=4, share=settings.xero_pacing_share)),
            search_pacer=Pacer(Limits(calls_per_window=4, window_s=1.0, calls_per_day=250_000,
                                      concurrent_max=4, share=settings.xero_pacing_share)),
            timeout_s=settings.hubspot_timeout_s)
        catalogue = HubSpotCatalogue(
            runtime.pool, hubspot,
            names=PropertyNames(key=settings.hubspot_product_key_property,
                                tier=settings.hubspot_tier_property),
            interval_s=settings.hubspot_catalog_interval_s, outbox_channel=OUTBOX_CHANNEL,
            on_publish=relay.wake,
            # The scheduled pull runs where HubSpot's lease is, beside its pushes and pacer.
            scheduled_here=lambda: owns(HUBSPOT_CONNECTION))
        hubspot_pusher = HubSpotPusher(runtime.pool, hubspot, queue)

    async def push(job: Job) -> None:
        if job.connection_id == HUBSPOT_CONNECTION and hubspot_pusher is not None:
            await hubspot_pusher.push(job)
        elif job.connection_id != HUBSPOT_CONNECTION and xero_pusher is not None:
            await xero_pusher.push(job)
        else:
            await queue.wait(job, seconds=UNCONFIGURED_RECHECK_S, unknown=job.outcome_unknown,
                             reason="target not configured")

    def paused_for_s(connection_id: str) -> float:
        if connection_id == HUBSPOT_CONNECTION:
            return hubspot.pacer.paused_for_s(HUBSPOT_BUCKET) if hubspot else 0.0
        return xero_pacer.paused_for_s(connection_id) if xero_pacer else 0.0

    # Each connection is drained by one sync process at a time, so its pacer's limits are
    # the organisation's whatever the number of processes (app/ownership.py).
    owner: Ownership | None = None

    def owns(connection_id: str) -> bool:
        return owner is not None and owner.owns(connection_id)

    def work_seen(connection_ids: list[str]) -> None:
        if owner is not None:
            owner.work_seen(connection_ids)

    scheduler = Scheduler(queue, push, paused_for_s,
                          workers_per_connection=settings.xero_concurrent_max,
                          poll_interval_s=settings.poll_interval_s, owns=owns,
                          work_seen=work_seen)
    owner = Ownership(
        LeaseTable(settings.database_url, SCHEMA, member_id(),
                   always=[HUBSPOT_CONNECTION] if hubspot is not None else []),
        _Pacing(xero_pacer, hubspot), stop_lane=scheduler.stop_lane, on_acquire=scheduler.wake)
    if xero_pacer is not None:
        # The fence, not a handover, stops a call: a push in hand finishes (Ownership.holds).
        xero_pacer.may_call = lambda connection_id: owner is not None and owner.holds(
            connection_id)

    sync = SyncApp(
        connections=XeroConnections(runtime.pool, keys, xero, grants, on_connected=scheduler.wake),
        webhooks=XeroWebhooks(runtime.pool, settings.xero_webhook_key, on_queued=scheduler.wake),
        status=SyncStatusReader(runtime.pool, xero_configured=settings.xero_configured,
                                hubspot_configured=hubspot is not None),
        queue=queue,
        mappings=MappingBook(runtime.pool),
        wake=scheduler.wake,
        hubspot_catalogue=catalogue,
    )
    # The intake's own connections: never waiting behind the lanes' claims in the main pool.
    intake_pool = create_pool(settings.database_url, SCHEMA, max_size=INTAKE_POOL_MAX,
                              name="sync-intake")
    subscribe(runtime.broker, intake_pool, scheduler.wake)

    async def start(_: Runtime) -> None:
        await intake_pool.open(wait=True, timeout=30)
        async with runtime.pool.connection() as conn:
            # HubSpot is a connection of its own while its invoices are pushed; intake queues
            # HubSpot changes only while it is active.
            await conn.execute(
                "INSERT INTO connections (connection_id, target, name, status) VALUES"
                " (%s, 'hubspot', 'HubSpot', %s) ON CONFLICT (connection_id) DO UPDATE"
                " SET status = EXCLUDED.status",
                (HUBSPOT_CONNECTION, "active" if hubspot and settings.hubspot_push_invoices
                 else "disconnected"))
        await relay.start()
        await owner.start()
        await scheduler.start()
        if catalogue is not None:
            await catalogue.start()

    async def stop(_: Runtime) -> None:
        await scheduler.stop()
        await owner.stop()
        if catalogue is not None:
            await catalogue.stop()
        await relay.stop()
        if xero is not None:
            await xero.aclose()
        if hubspot is not None:
            await hubspot.aclose()

    async def close_intake(_: Runtime) -> None:
        await intake_pool.close()

    return ServiceParts(
        route_handlers=[create_router(sync)],
        exception_statuses=EXCEPTION_STATUSES,
        on_startup=[start],
        on_shutdown=[stop],
        after_subscribers=[close_intake],
    )


SPEC = ServiceSpec(
    name="sync_service",
    title="Sync service",
    version="0.1.0",
    schema=SCHEMA,
    http_port_default=8004,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=SyncSettings,
)
