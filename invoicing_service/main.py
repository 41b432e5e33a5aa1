"""Wiring of the invoicing service: the one place where its parts meet the kernel."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from invoicing_service.alerts import http as alerts_http
from invoicing_service.alerts.app import Alerts
from invoicing_service.alerts.messaging import subscribe_alerts
from invoicing_service.app.billing import BillingRuns
from invoicing_service.app.customers import Customers
from invoicing_service.app.documents import Documents
from invoicing_service.app.invoices import Invoices
from invoicing_service.app.issued_documents import DocumentIssuer
from invoicing_service.app.payments import PaymentIntake
from invoicing_service.app.queries import InvoiceQueries
from invoicing_service.app.store import OUTBOX_CHANNEL, InvoicingApplication, open_event_store
from invoicing_service.app.sweeper import Periodic, request_previous_month, sweep_overdue
from invoicing_service.documents import Party
from invoicing_service.http import EXCEPTION_STATUSES, Services, create_router
from invoicing_service.mail.relay import EmailRelay
from invoicing_service.messaging import subscribe_ledger, subscribe_payments
from invoicing_service.recurring import http as recurring_http
from invoicing_service.recurring.app.items import RecurringItems
from invoicing_service.recurring.app.ledger import LedgerCharges
from invoicing_service.recurring.app.renewals import Clock, Renewals
from invoicing_service.recurring.messaging import subscribe_payments as subscribe_top_ups
from invoicing_service.recurring.scheduler import RenewalScheduler
from invoicing_service.settings import InvoicingSettings
from services.outbox import OutboxRelay, jetstream_publisher
from services.runtime import Runtime, ServiceParts, ServiceSpec

SCHEMA = "invoicing"


def open_application(database_url: str) -> InvoicingApplication:
    return open_event_store(database_url, SCHEMA)


def build(runtime: Runtime) -> ServiceParts:
    settings = runtime.settings
    assert isinstance(settings, InvoicingSettings)
    relay = OutboxRelay(runtime.pool, jetstream_publisher(lambda: runtime.broker.connection),
                        channel=OUTBOX_CHANNEL, poll_interval_s=settings.outbox_poll_interval_s,
                        name="invoicing-outbox")
    customers = Customers(runtime.pool)
    queries = InvoiceQueries(runtime.pool, runtime.reads)
    # The event store opens at start-up, after the kernel applied the migrations.
    invoices = Invoices()
    runs = BillingRuns(runtime.pool, customers, invoices, page_size=settings.billing_run_page_size)
    intake = PaymentIntake(customers, invoices)
    documents = Documents(queries, customers, Party(
        name=settings.supplier_name, address_lines=tuple(settings.supplier_address_lines),
        country=settings.supplier_country, vat_number=settings.supplier_vat_number,
        email=settings.supplier_email))
    mail = EmailRelay.from_settings(runtime.pool, settings)
    issuer = DocumentIssuer(runtime.pool, documents, wake_mail=mail.wake)
    subscribe_ledger(runtime.broker, customers)
    subscribe_payments(runtime.broker, intake)
    overdue = Periodic("invoicing-overdue", settings.overdue_sweep_interval_s,
                       lambda: sweep_overdue(queries, invoices))
    schedule = Periodic("invoicing-billing-schedule", settings.billing_schedule_check_s,
                        lambda: request_previous_month(runs))

    recurring = build_recurring(runtime, settings, relay, mail)

    async def start(_: Runtime) -> None:
        invoices.attach(await asyncio.to_thread(open_application, settings.database_url))
        await relay.start()
        await mail.start()
        issuer.start()
        await runs.resume_unfinished()
        overdue.start()
        if settings.billing_schedule_enabled:
            schedule.start()
        await recurring.start()

    async def stop(_: Runtime) -> None:
        await recurring.stop()
        await schedule.stop()
        await overdue.stop()
        await runs.stop()
        await issuer.stop()
        await mail.stop()
        await relay.stop()
        await asyncio.to_thread(invoices.close)

    services = Services(invoices=invoices, queries=queries, runs=runs, customers=customers,
                        documents=documents, issuer=issuer)
    return ServiceParts(route_handlers=[create_router(services), *recurring.routers],
                        exception_statuses={**EXCEPTION_STATUSES, **recurring.statuses},
                        on_startup=[start], on_shutdown=[stop])


class Recurring:
    """Recurring charges and alerts (issue 13): their scheduler, subscribers and routes. They
    share the invoicing outbox relay (one `outbox` table) and the email relay."""

    def __init__(self, scheduler: RenewalScheduler, ledger: LedgerCharges, enabled: bool,
                 routers: list[Any], statuses: dict[type[Exception], tuple[int, str]]) -> None:
        self.scheduler = scheduler
        self.ledger = ledger
        self.enabled = enabled
        self.routers = routers
        self.statuses = statuses

    async def start(self) -> None:
        if self.enabled:
            await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.ledger.aclose()


def build_recurring(runtime: Runtime, settings: InvoicingSettings, outbox: OutboxRelay,
                    mail: EmailRelay) -> Recurring:
    ledger = LedgerCharges(
        settings.ledger_url, settings.service_token_secret, timeout_s=settings.ledger_timeout_s,
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
    alerts = Alerts(runtime.pool, min_interval=timedelta(seconds=settings.alert_min_interval_s),
                    on_commit=mail.wake)
    scheduler = RenewalScheduler(renewals, poll_interval_s=settings.recurring_poll_interval_s)
    subscribe_top_ups(runtime.broker, renewals)
    subscribe_alerts(runtime.broker, alerts)
    routers = [
        recurring_http.router(recurring_http.RecurringServices(
            RecurringItems(runtime.pool, renewals), renewals,
            manual_clock=settings.recurring_manual_clock)),
        alerts_http.router(alerts),
    ]
    return Recurring(scheduler, ledger, settings.recurring_scheduler, routers,
                     {**recurring_http.EXCEPTION_STATUSES, **alerts_http.EXCEPTION_STATUSES})


SPEC = ServiceSpec(
    name="invoicing_service",
    title="Invoicing service",
    version="0.1.0",
    schema=SCHEMA,
    http_port_default=8003,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=InvoicingSettings,
)
