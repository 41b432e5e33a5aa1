"""Use cases of the payments service, over its PostgreSQL schema and the providers' APIs."""

from __future__ import annotations

from dataclasses import dataclass

from payments_service.app.checkout import Checkouts
from payments_service.app.hubspot_webhooks import HubSpotWebhooks
from payments_service.app.invoices import InvoiceBook
from payments_service.app.queries import PaymentRecords
from payments_service.app.stripe_webhooks import StripeWebhooks


@dataclass(frozen=True, slots=True)
class PaymentsApp:
    """Everything the HTTP routes and subscribers call, built once in main.build."""

    checkouts: Checkouts
    stripe_webhooks: StripeWebhooks
    hubspot_webhooks: HubSpotWebhooks
    records: PaymentRecords
    invoices: InvoiceBook
