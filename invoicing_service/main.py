"""Wiring of the invoicing service: the one place where its parts meet the kernel."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

# ---- recurring charges and alerts (issue 13) ----------------------------------------------
# One block, so the merge with the invoicing core keeps it whole: the core's settings class
# derives from RecurringSettings, its ServiceParts take these routes, hooks and statuses, and
# one EmailRelay and one OutboxRelay serve both (drop the duplicates at merge).
from invoicing_service.alerts import http as alerts_http
from invoicing_service.alerts.app import Alerts
from invoicing_service.alerts.messaging import subscribe_alerts
from invoicing_service.mail import EmailRelay
from invoicing_service.recurring import http as recurring_http
from invoicing_service.recurring.app.announce import OUTBOX_CHANNEL
from invoicing_service.recurring.app.items import RecurringItems
from invoicing_service.recurring.app.ledger import LedgerCharges
from invoicing_service.recurring.app.renewals import Clock, Renewals
from invoicing_service.recurring.messaging import subscribe_payments
from invoicing_service.recurring.scheduler import RenewalScheduler
from invoicing_service.recurring.settings import RecurringSettings
from services.outbox import OutboxRelay, jetstream_publisher
from services.runtime import Runtime, ServiceParts, ServiceSpec


def build_recurring(runtime: Runtime) -> ServiceParts:
    settings = runtime.settings
    assert isinstance(settings, RecurringSettings)
    outbox = OutboxRelay(runtime.pool, jetstream_publisher(lambda: runtime.broker.connection),
                         channel=OUTBOX_CHANNEL, name="invoicing-outbox")
    mail = EmailRelay.from_settings(runtime.pool, settings)
    ledger = LedgerCharges(
        settings.ledger_url, settings.jwt_secret, timeout_s=settings.ledger_timeout_s,
        attempts_max=settings.ledger_attempts_max,
        retry_initial_s=settings.ledger_retry_initial_s,
        retry_max_s=settings.ledger_retry_max_s)
    renewals = Renewals(
        runtime.pool, ledger, grace=settings.grace,
        retry_interval=timedelta(seconds=settings.recurring_retry_interval_s),
        batch_size_max=settings.recurring_batch_size_max,
        concurrency=settings.recurring_concurrency,
        clock=Clock(timedelta(seconds=settings.recurring_clock_offset_s)),
        on_commit=outbox.wake)

    def wake_mail() -> None:
        mail.wake()

    alerts = Alerts(runtime.pool, min_interval=timedelta(seconds=settings.alert_min_interval_s),
                    on_commit=wake_mail)
    scheduler = RenewalScheduler(renewals, poll_interval_s=settings.recurring_poll_interval_s)
    subscribe_payments(runtime.broker, renewals)
    subscribe_alerts(runtime.broker, alerts)

    async def start(_: Runtime) -> None:
        await outbox.start()
        await mail.start()
        if settings.recurring_scheduler:
            await scheduler.start()

    async def stop(_: Runtime) -> None:
        await scheduler.stop()
        await mail.stop()
        await outbox.stop()
        await ledger.aclose()

    return ServiceParts(
        route_handlers=[
            recurring_http.router(recurring_http.RecurringServices(
                RecurringItems(runtime.pool, renewals), renewals,
                manual_clock=settings.recurring_manual_clock)),
            alerts_http.router(alerts),
        ],
        exception_statuses={**recurring_http.EXCEPTION_STATUSES,
                            **alerts_http.EXCEPTION_STATUSES},
        on_startup=[start],
        on_shutdown=[stop],
    )
# ---- end of recurring charges and alerts ----------------------------------------------------


def build(runtime: Runtime) -> ServiceParts:
    return build_recurring(runtime)


SPEC = ServiceSpec(
    name="invoicing_service",
    title="Invoicing service",
    version="0.1.0",
    schema="invoicing",
    http_port_default=8003,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=RecurringSettings,
)
