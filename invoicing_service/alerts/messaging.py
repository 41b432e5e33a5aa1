"""NATS: the events that become alerts. ledger.v1.events.balance_low from the ledger,
invoicing.v1.recurring.past_due / suspended (our own renewals) and invoicing.v1.overdue."""

from __future__ import annotations

from typing import Final

import msgspec
import structlog
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage

from contracts.invoicing import InvoiceOverdue, RecurringPastDue, RecurringSuspended
from contracts.ledger import BalanceLow
from contracts.subjects import (
    INVOICING_OVERDUE,
    INVOICING_RECURRING_PAST_DUE,
    INVOICING_RECURRING_SUSPENDED,
    LEDGER_BALANCE_LOW,
)
from invoicing_service.alerts.app import Alerts
from invoicing_service.alerts.domain import (
    Alert,
    balance_low_alert,
    overdue_alert,
    past_due_alert,
    suspended_alert,
)
from services.broker import durable_pull

log = structlog.get_logger(__name__)

LEDGER_DURABLE: Final = "invoicing-alerts-ledger"
INVOICING_DURABLE: Final = "invoicing-alerts-invoicing"
_PULL_BATCH: Final = 32
_DELIVERIES_MAX: Final = 20


def alert_for(subject: str, body: bytes) -> Alert | None:
    """The alert a message asks for; None for subjects that alert nobody. Raises
    msgspec.DecodeError / ValidationError for a malformed message."""
    if subject == LEDGER_BALANCE_LOW:
        low = msgspec.json.decode(body, type=BalanceLow)
        return balance_low_alert(low.account_id, low.event_id, low.available, low.threshold,
                                 low.currency)
    if subject == INVOICING_RECURRING_PAST_DUE:
        due = msgspec.json.decode(body, type=RecurringPastDue)
        return past_due_alert(due.account_id, due.event_id, due.product, due.reference,
                              due.period, due.suspend_after)
    if subject == INVOICING_RECURRING_SUSPENDED:
        off = msgspec.json.decode(body, type=RecurringSuspended)
        return suspended_alert(off.account_id, off.event_id, off.product, off.reference)
    if subject == INVOICING_OVERDUE:
        late = msgspec.json.decode(body, type=InvoiceOverdue)
        return overdue_alert(late.account_id, late.event_id, late.number, late.amount_due,
                             late.currency, late.due_at)
    return None


def subscribe_alerts(broker: NatsBroker, alerts: Alerts) -> None:
    async def handle(message: NatsMessage) -> None:
        subject = message.raw_message.subject
        try:
            alert = alert_for(subject, message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A malformed message will not improve on redelivery: acked and logged.
            log.error("alerts.event_rejected", subject=subject, error=str(exc))
            return
        if alert is not None:
            await alerts.send(alert)

    @broker.subscriber(
        LEDGER_BALANCE_LOW,
        **durable_pull("LEDGER", LEDGER_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="invoicing:alerts:balance_low",
        description="Emails the account's recipients when its balance crosses below the"
                    " threshold (once per crossing).",
    )
    async def on_balance_low(message: NatsMessage) -> None:
        await handle(message)

    @broker.subscriber(
        "invoicing.v1.>",
        **durable_pull("INVOICING", INVOICING_DURABLE, batch_size=_PULL_BATCH,
                       deliveries_max=_DELIVERIES_MAX),
        title="invoicing:alerts:invoicing",
        description="Emails renewal past due, suspension and invoice overdue alerts.",
    )
    async def on_invoicing_event(message: NatsMessage) -> None:
        await handle(message)
