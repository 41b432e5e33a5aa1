"""The parts of Stripe events and HubSpot notifications this service reads.

Decoding is lenient about what we do not read (providers add fields in every API version)
and strict about what we do: a signed event whose `id`, `type` or amounts are malformed is
refused rather than guessed at. Amounts are integers in minor units; Stripe currencies are
lower-case ISO codes.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeVar

import msgspec

from payments_service.domain.errors import MalformedWebhook

T = TypeVar("T")

_ProviderId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
_Minor = Annotated[int, msgspec.Meta(ge=0, le=10**15)]

# HubSpot sends at most 100 notifications per request (developers.hubspot.com webhooks guide).
HUBSPOT_BATCH_MAX: Final = 100
HUBSPOT_INVOICE_OBJECT_TYPE: Final = "0-53"


class StripeEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: _ProviderId
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    created: int
    livemode: bool = False
    data: StripeEventData


class StripeEventData(msgspec.Struct, frozen=True, kw_only=True):
    object: msgspec.Raw


class CheckoutSession(msgspec.Struct, frozen=True, kw_only=True):
    id: _ProviderId
    amount_total: _Minor | None = None
    currency: str | None = None
    payment_status: str | None = None
    mode: str | None = None
    # An id, or the whole object when the endpoint expands it.
    payment_intent: str | dict[str, Any] | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] = {}

    @property
    def payment_intent_id(self) -> str | None:
        return _object_id(self.payment_intent)


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    id: _ProviderId
    amount: _Minor
    amount_refunded: _Minor
    currency: str
    payment_intent: str | dict[str, Any] | None = None

    @property
    def payment_intent_id(self) -> str | None:
        return _object_id(self.payment_intent)


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    id: _ProviderId
    amount: _Minor
    currency: str
    status: str | None = None
    reason: str | None = None
    charge: str | dict[str, Any] | None = None
    payment_intent: str | dict[str, Any] | None = None

    @property
    def payment_intent_id(self) -> str | None:
        return _object_id(self.payment_intent)

    @property
    def charge_id(self) -> str | None:
        return _object_id(self.charge)

    @property
    def counts(self) -> bool:
        """Whether the refund takes money back: Stripe counts pending refunds in a charge's
        `amount_refunded` too, so only failed and canceled ones do not."""
        return self.status not in ("failed", "canceled")


class PaymentError(msgspec.Struct, frozen=True, kw_only=True):
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None


class PaymentIntent(msgspec.Struct, frozen=True, kw_only=True):
    id: _ProviderId
    amount: _Minor
    currency: str
    metadata: dict[str, str] = {}
    last_payment_error: PaymentError | None = None


def _object_id(value: str | dict[str, Any] | None) -> str | None:
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value


# What msgspec raises for JSON it cannot read: malformed or mistyped (DecodeError), invalid
# UTF-8 inside a string (UnicodeDecodeError) and nesting past the stack (RecursionError). The
# HTTP kernel refuses the last two first (services/http/bodies.py); this keeps the decoders
# total on their own.
UNREADABLE_JSON: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def refuse_unstorable_text(body: bytes, what: str) -> None:
    """Refuse a payload PostgreSQL cannot store: a NUL (JSON ``\\u0000``) in any string.

    Received payloads are kept as jsonb for audit, and jsonb has no NUL: the insert failed
    and the delivery was a 500, retried by the provider for days. A 400 says what is wrong;
    the provider's dashboard shows it. Other control characters are stored as they came.
    """
    if b"\\u0000" not in body:  # the only way JSON spells a NUL; most bodies stop here
        return
    try:
        value = msgspec.json.decode(body)
    except UNREADABLE_JSON as exc:
        raise MalformedWebhook(f"not {what}: {exc}") from None
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise MalformedWebhook(f"{what} holds a NUL character, which cannot be stored")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def decode_stripe_event(body: bytes) -> StripeEvent:
    try:
        event = msgspec.json.decode(body, type=StripeEvent)
    except UNREADABLE_JSON as exc:
        raise MalformedWebhook(f"not a Stripe event: {exc}") from None
    refuse_unstorable_text(body, "a Stripe event")
    return event


def decode_stripe_object(event: StripeEvent, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(event.data.object, type=kind)
    except UNREADABLE_JSON as exc:
        raise MalformedWebhook(f"{event.type}: unexpected data.object: {exc}") from None


class HubSpotNotification(msgspec.Struct, frozen=True, kw_only=True):
    eventId: int | str  # HubSpot's field names
    subscriptionId: int | str = 0
    portalId: int | str = 0
    occurredAt: int = 0
    subscriptionType: str = ""
    objectId: int | str | None = None
    objectTypeId: str | None = None
    propertyName: str | None = None
    propertyValue: str | None = None
    attemptNumber: int = 0

    @property
    def key(self) -> str:
        # HubSpot does not promise eventId is unique on its own; with the portal, the
        # subscription and the object it names one notification across retries.
        return f"{self.portalId}:{self.subscriptionId}:{self.eventId}:{self.objectId}"

    @property
    def is_invoice_paid(self) -> bool:
        """An invoice's status became paid (`object.propertyChange` on invoices, or the
        legacy `invoice.*` subscription names)."""
        if self.subscriptionType == "invoice.paid":
            return True
        is_invoice = (
            self.objectTypeId == HUBSPOT_INVOICE_OBJECT_TYPE
            or self.subscriptionType.startswith("invoice.")
        )
        return (
            is_invoice
            and self.propertyName == "hs_invoice_status"
            and (self.propertyValue or "").lower() == "paid"
        )


def decode_hubspot_notifications(body: bytes) -> list[tuple[str, HubSpotNotification]]:
    """Each notification of a batch with its JSON as received (kept for audit)."""
    try:
        raws = msgspec.json.decode(body, type=list[msgspec.Raw])
    except UNREADABLE_JSON as exc:
        raise MalformedWebhook(f"not a HubSpot notification batch: {exc}") from None
    refuse_unstorable_text(body, "a HubSpot notification batch")
    if len(raws) > HUBSPOT_BATCH_MAX:
        raise MalformedWebhook(f"more than {HUBSPOT_BATCH_MAX} notifications in one request")
    batch = []
    for raw in raws:
        try:
            note = msgspec.json.decode(raw, type=HubSpotNotification)
        except UNREADABLE_JSON as exc:
            raise MalformedWebhook(f"not a HubSpot notification: {exc}") from None
        batch.append((bytes(raw).decode("utf-8"), note))
    return batch
