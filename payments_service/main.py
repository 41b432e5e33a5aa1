"""Wiring of the payments service: the one place where its parts meet the kernel."""

from __future__ import annotations

from pathlib import Path

from payments_service.app import PaymentsApp
from payments_service.app.announce import OUTBOX_CHANNEL
from payments_service.app.checkout import Checkouts, TopUpLimits
from payments_service.app.hubspot_api import HubSpotClient
from payments_service.app.hubspot_webhooks import HubSpotWebhooks
from payments_service.app.invoices import InvoiceBook
from payments_service.app.queries import PaymentRecords
from payments_service.app.stripe_api import SessionLinks, StripeClient
from payments_service.app.stripe_webhooks import StripeWebhooks
from payments_service.http import EXCEPTION_STATUSES, create_router
from payments_service.messaging import INVOICES_DURABLE, subscribe_invoices
from payments_service.settings import PaymentsSettings
from services.outbox import OutboxRelay, jetstream_publisher
from services.outbox_metrics import outbox_metrics
from services.runtime import Runtime, ServiceParts, ServiceSpec
from services.stream_metrics import consumer_metrics


def build(runtime: Runtime) -> ServiceParts:
    settings = runtime.settings
    assert isinstance(settings, PaymentsSettings)
    relay = OutboxRelay(
        runtime.pool,
        jetstream_publisher(lambda: runtime.broker.connection),
        channel=OUTBOX_CHANNEL,
        poll_interval_s=settings.outbox_poll_interval_s,
        name="payments-outbox",
    )
    stripe = StripeClient(
        base_url=settings.stripe_api_base,
        secret_key=settings.stripe_secret_key,
        timeout_s=settings.stripe_timeout_s,
        attempts_max=settings.stripe_attempts_max,
        wait_initial_s=settings.stripe_retry_wait_initial_s,
        wait_max_s=settings.stripe_retry_wait_max_s,
    )
    hubspot = HubSpotClient(
        base_url=settings.hubspot_api_base,
        access_token=settings.hubspot_access_token,
        invoice_id_property=settings.hubspot_invoice_id_property,
    )
    portal = settings.public_base_url.rstrip("/")
    payments = PaymentsApp(
        checkouts=Checkouts(
            runtime.pool,
            stripe,
            links=SessionLinks(
                success_url=f"{portal}/billing/checkout/success?session_id={{CHECKOUT_SESSION_ID}}",
                cancel_url=f"{portal}/billing/checkout/cancelled",
            ),
            limits=TopUpLimits(min_micros=settings.topup_min_micros,
                               max_micros=settings.topup_max_micros),
        ),
        stripe_webhooks=StripeWebhooks(runtime.pool, settings.webhook_secrets,
                                       on_commit=relay.wake),
        hubspot_webhooks=HubSpotWebhooks(runtime.pool, hubspot,
                                         client_secret=settings.hubspot_client_secret,
                                         on_commit=relay.wake),
        records=PaymentRecords(runtime.pool, runtime.reads),
        invoices=InvoiceBook(runtime.pool),
    )
    subscribe_invoices(runtime.broker, payments.invoices)

    async def start_relay(_: Runtime) -> None:
        await relay.start()

    async def stop_clients(_: Runtime) -> None:
        await relay.stop()
        await stripe.aclose()
        await hubspot.aclose()

    return ServiceParts(
        route_handlers=[create_router(payments, hubspot_signed_url=settings.hubspot_webhook_url)],
        exception_statuses=EXCEPTION_STATUSES,
        on_startup=[start_relay],
        on_shutdown=[stop_clients],
        metrics=[outbox_metrics(runtime.pool),
                 consumer_metrics(lambda: runtime.broker.connection,
                                  lambda: [("INVOICING", INVOICES_DURABLE)])],
    )


SPEC = ServiceSpec(
    name="payments_service",
    title="Payments service",
    version="0.1.0",
    schema="payments",
    http_port_default=8002,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    settings_class=PaymentsSettings,
)
