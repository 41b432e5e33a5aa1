"""Wiring of the invoicing service: the one place where its parts meet the kernel."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
    queries = InvoiceQueries(runtime.pool)
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

    async def start(_: Runtime) -> None:
        invoices.attach(await asyncio.to_thread(open_application, settings.database_url))
        await relay.start()
        await mail.start()
        issuer.start()
        await runs.resume_unfinished()
        overdue.start()
        if settings.billing_schedule_enabled:
            schedule.start()

    async def stop(_: Runtime) -> None:
        await schedule.stop()
        await overdue.stop()
        await runs.stop()
        await issuer.stop()
        await mail.stop()
        await relay.stop()
        await asyncio.to_thread(invoices.close)

    services = Services(invoices=invoices, queries=queries, runs=runs, customers=customers,
                        documents=documents, issuer=issuer)
    return ServiceParts(route_handlers=[create_router(services)],
                        exception_statuses=EXCEPTION_STATUSES,
                        on_startup=[start], on_shutdown=[stop])


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
