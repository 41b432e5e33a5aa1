"""HTTP routes of the payments service: webhooks, checkout sessions, payment records.

Webhook routes are public (the provider's signature is their authentication); everything
else needs a bearer token. A portal token sees only its own account: any other account, or
another account's payment, answers 404.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, PathParameter, QueryParameter

from contracts.http.payments import (
    PAYMENTS_PAGE_MAX,
    CheckoutSessionView,
    CreateTopUp,
    PaymentsPage,
    PaymentStatus,
    PaymentView,
)
from contracts.ids import KEY_LENGTH_MAX, KEY_PATTERN
from contracts.money import Currency
from payments_service.app import PaymentsApp
from payments_service.app.checkout import DEFAULT_PROFILE, AccountProfile, OpenedCheckout, TopUpOrder
from payments_service.app.queries import PAGE_SIZE_DEFAULT, PaymentFilter
from payments_service.app.records import PaymentRow
from payments_service.domain import errors
from payments_service.domain.checkout import TaxProfile, minor_to_amount
from services.http import (
    BEARER_SECURITY,
    OPERATOR,
    PORTAL,
    CurrentPrincipal,
    Principal,
    problem_responses,
    requires_any_scope,
    requires_scope,
)
from services.http.parameters import cursor_parameter, instant_parameter, parse_instant

# Domain errors -> (status, problem type); the kernel turns them into problem+json.
EXCEPTION_STATUSES: Final[dict[type[Exception], tuple[int, str]]] = {
    errors.SignatureRejected: (400, "invalid-signature"),
    errors.MalformedWebhook: (400, "malformed-webhook"),
    errors.InvalidCursor: (400, "invalid-cursor"),
    errors.TaxProfileForbidden: (403, "tax-profile-forbidden"),
    errors.AccountNotVisible: (404, "not-found"),
    errors.InvoiceNotFound: (404, "not-found"),
    errors.InvoiceNotPayable: (409, "invoice-not-payable"),
    errors.IdempotencyKeyReused: (409, "idempotency-key-reused"),
    errors.AmountNotPayable: (422, "amount-not-payable"),
    errors.TopUpOutOfRange: (422, "amount-out-of-range"),
    errors.TaxProfileInvalid: (422, "tax-profile-invalid"),
    errors.ProviderRejected: (502, "payment-provider-rejected"),
    errors.ProviderUnavailable: (503, "payment-provider-unavailable"),
}

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        min_length=1,
        max_length=KEY_LENGTH_MAX,
        pattern=KEY_PATTERN,
        description="Repeat a request with the same key and body to get the same checkout.",
    ),
]
# Portal tokens (their own account only) and operators.
_READERS = [requires_any_scope(PORTAL, OPERATOR)]
Payments = NamedDependency[PaymentsApp]


# -- bodies of this service beyond contracts.http.payments --------------------------------------


class TaxProfileBody(msgspec.Struct, frozen=True, kw_only=True):
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z]{2}$", examples=["FR"])]
    vat_number: Annotated[str, msgspec.Meta(min_length=2, max_length=32)] | None = None
    reverse_charge: bool = False

    def to_domain(self) -> TaxProfile:
        return TaxProfile(country=self.country.upper(), vat_number=self.vat_number,
                          reverse_charge=self.reverse_charge)


class TopUpRequest(CreateTopUp, frozen=True, kw_only=True):
    """CreateTopUp, plus the terms an operator may state for this one checkout. A portal
    token gets the account's stored profile (PUT /v1/payment-profiles) and may not differ."""

    currency: Currency | None = None
    tax: TaxProfileBody | None = None


class PaymentProfileBody(msgspec.Struct, frozen=True, kw_only=True):
    currency: Currency
    tax: TaxProfileBody


class PaymentProfileView(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    currency: Currency
    tax: TaxProfileBody
    stored: Annotated[bool, msgspec.Meta(description="False: the defaults (GBP, UK VAT)")]


class StripeWebhookAck(msgspec.Struct, frozen=True, kw_only=True):
    received: bool
    event_id: str
    outcome: str


class NotificationAck(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    outcome: str


class HubSpotWebhookAck(msgspec.Struct, frozen=True, kw_only=True):
    received: int
    notifications: list[NotificationAck]


# -- webhooks ------------------------------------------------------------------------------


@post(
    "/v1/webhooks/stripe",
    status_code=200,
    summary="Receive a Stripe event",
    description="Verified against every configured endpoint secret (Stripe-Signature, 300 s); "
    "each event id is applied once. Unknown event types are acknowledged and recorded.",
    responses=problem_responses(400),
    tags=["webhooks"],
)
async def receive_stripe_event(request: Request[Any, Any, Any], payments: Payments) -> StripeWebhookAck:
    body = await request.body()
    result = await payments.stripe_webhooks.receive(body, request.headers.get("stripe-signature"))
    return StripeWebhookAck(received=True, event_id=result.event_id, outcome=result.outcome)


def hubspot_route(signed_url: str | None) -> Any:
    @post(
        "/v1/webhooks/hubspot",
        status_code=200,
        summary="Receive a batch of HubSpot notifications",
        description="X-HubSpot-Signature-v3 verified (5-minute window); up to 100 "
        "notifications, each applied once; invoice-paid notifications settle the invoice.",
        responses=problem_responses(400, 503),
        tags=["webhooks"],
    )
    async def receive_hubspot_notifications(
        request: Request[Any, Any, Any], payments: Payments
    ) -> HubSpotWebhookAck:
        body = await request.body()
        # HubSpot signs the URL it called; behind a proxy that is the configured public one.
        uri = str(request.url)
        if signed_url:
            query = request.scope.get("query_string", b"").decode("latin-1")
            uri = signed_url + (f"?{query}" if query else "")
        results = await payments.hubspot_webhooks.receive(
            method=request.method, uri=uri, body=body,
            signature=request.headers.get("x-hubspot-signature-v3"),
            timestamp_ms=request.headers.get("x-hubspot-request-timestamp"),
        )
        return HubSpotWebhookAck(
            received=len(results),
            notifications=[NotificationAck(key=r.key, outcome=r.outcome) for r in results],
        )

    return receive_hubspot_notifications


# -- checkout sessions ---------------------------------------------------------------------


def _session_view(opened: OpenedCheckout) -> CheckoutSessionView:
    return CheckoutSessionView(
        session_id=opened.session_id,
        checkout_url=opened.checkout_url,
        amount=minor_to_amount(opened.net_minor),
        vat_amount=minor_to_amount(opened.vat_minor),
        currency=opened.currency,  # type: ignore[arg-type]
        expires_at=opened.expires_at.astimezone(UTC) if opened.expires_at else None,
    )


@post(
    "/v1/checkout/topups",
    status_code=201,
    summary="Open a Stripe checkout to top up an account",
    description="Credits `amount`; VAT is charged on its own line (20% UK, or 0% under "
    "reverse charge). Idempotent with an Idempotency-Key header.",
    responses=problem_responses(400, 401, 403, 404, 409, 422, 502, 503),
    tags=["checkout"],
    guards=_READERS,
    security=BEARER_SECURITY,
)
async def open_topup_checkout(
    data: JSONBody[TopUpRequest],
    principal: CurrentPrincipal,
    payments: Payments,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutSessionView:
    order = TopUpOrder(
        account_id=data.account_id, amount=data.amount, currency=data.currency,
        tax=data.tax.to_domain() if data.tax else None,
    )
    opened = await payments.checkouts.open_topup(principal, order, idempotency_key)
    return _session_view(opened)


@post(
    "/v1/checkout/invoices/{invoice_id:str}",
    status_code=201,
    summary="Open a Stripe checkout to pay an invoice",
    description="Charges what is still owed on the invoice (after credit notes).",
    responses=problem_responses(400, 401, 403, 404, 409, 502, 503),
    tags=["checkout"],
    guards=_READERS,
    security=BEARER_SECURITY,
)
async def open_invoice_checkout(
    invoice_id: Annotated[str, PathParameter(min_length=1, max_length=KEY_LENGTH_MAX,
                                             pattern=KEY_PATTERN)],
    principal: CurrentPrincipal,
    payments: Payments,
    idempotency_key: IdempotencyKey = None,
) -> CheckoutSessionView:
    opened = await payments.checkouts.open_invoice(principal, invoice_id, idempotency_key)
    return _session_view(opened)


# -- payment profiles ----------------------------------------------------------------------


def _profile_view(account_id: UUID, profile: AccountProfile, *, stored: bool) -> PaymentProfileView:
    return PaymentProfileView(
        account_id=account_id,
        currency=profile.currency,  # type: ignore[arg-type]
        tax=TaxProfileBody(country=profile.tax.country, vat_number=profile.tax.vat_number,
                           reverse_charge=profile.tax.reverse_charge),
        stored=stored,
    )


@put(
    "/v1/payment-profiles/{account_id:uuid}",
    summary="Set the currency and tax treatment of an account's top-ups",
    responses=problem_responses(400, 401, 403, 422),
    tags=["checkout"],
    guards=[requires_scope(OPERATOR)],
    security=BEARER_SECURITY,
)
async def set_payment_profile(
    account_id: FromPath[UUID], data: JSONBody[PaymentProfileBody], principal: CurrentPrincipal,
    payments: Payments,
) -> PaymentProfileView:
    profile = AccountProfile(currency=data.currency, tax=data.tax.to_domain())
    await payments.checkouts.set_profile(principal, account_id, profile)
    return _profile_view(account_id, profile, stored=True)


@get(
    "/v1/payment-profiles/{account_id:uuid}",
    summary="The currency and tax treatment of an account's top-ups",
    responses=problem_responses(401, 403, 404),
    tags=["checkout"],
    guards=_READERS,
    security=BEARER_SECURITY,
)
async def read_payment_profile(
    account_id: FromPath[UUID], principal: CurrentPrincipal, payments: Payments
) -> PaymentProfileView:
    if not principal.may_read_account(account_id):
        raise errors.AccountNotVisible(f"account {account_id} not found")
    profile = await payments.checkouts.profile(account_id)
    return _profile_view(account_id, profile or DEFAULT_PROFILE, stored=profile is not None)


# -- payment records -----------------------------------------------------------------------


def payment_view(row: PaymentRow) -> PaymentView:
    return PaymentView(
        payment_id=row.payment_id,
        account_id=row.account_id,
        provider=row.provider,  # type: ignore[arg-type]
        provider_reference=row.provider_reference,
        purpose=row.purpose,
        status=row.status,  # type: ignore[arg-type]
        amount=minor_to_amount(row.net_minor),
        vat_amount=minor_to_amount(row.vat_minor),
        refunded_amount=minor_to_amount(row.refunded_net_minor),
        currency=row.currency,  # type: ignore[arg-type]
        invoice_id=row.invoice_id,
        created_at=row.created_at.astimezone(UTC),
        received_at=row.received_at.astimezone(UTC) if row.received_at else None,
        failure_message=row.failure_message,
    )


def _visible_account(principal: Principal, account_id: UUID | None) -> UUID | None:
    """The account a listing is limited to: any (None) for an operator who names none; the
    token's own for a portal caller, who gets 404 for any other."""
    if principal.is_operator:
        return account_id
    if account_id is not None:
        if not principal.may_read_account(account_id):
            raise errors.AccountNotVisible(f"account {account_id} not found")
        return account_id
    try:
        own = UUID(principal.tenant_id or "")
    except ValueError:
        raise errors.AccountNotVisible("this token names no account") from None
    if not principal.may_read_account(own):
        raise errors.AccountNotVisible("this token names no account")
    return own


@get(
    "/v1/payments",
    summary="Payments, refunds and failures, newest first",
    description="Filters: account_id, status, from (inclusive), to (exclusive) on the time "
    "the payment was recorded. Pass next_cursor back as cursor for the next page.",
    responses=problem_responses(400, 401, 403, 404),
    tags=["payments"],
    guards=_READERS,
    security=BEARER_SECURITY,
)
async def list_payments(
    principal: CurrentPrincipal,
    payments: Payments,
    account_id: FromQuery[UUID | None] = None,
    status: FromQuery[PaymentStatus | None] = None,
    created_from: Annotated[str | None, instant_parameter(
        "Payments recorded at or after this instant", name="from")] = None,
    created_to: Annotated[str | None, instant_parameter(
        "Payments recorded before this instant", name="to")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=PAYMENTS_PAGE_MAX)] = PAGE_SIZE_DEFAULT,
    cursor: Annotated[str | None, cursor_parameter(512)] = None,
) -> Response[PaymentsPage]:
    where = PaymentFilter(
        account_id=_visible_account(principal, account_id),
        status=status,
        created_from=parse_instant(created_from, "from"),
        created_to=parse_instant(created_to, "to"),
    )
    (rows, next_cursor), route = await payments.records.page(where, limit=limit, cursor=cursor)
    page = PaymentsPage(items=[payment_view(row) for row in rows], next_cursor=next_cursor)
    return Response(page, headers=route.headers())


@get(
    "/v1/payments/{payment_id:str}",
    summary="One payment",
    responses=problem_responses(401, 403, 404),
    tags=["payments"],
    guards=_READERS,
    security=BEARER_SECURITY,
)
async def read_payment(
    payment_id: FromPath[str], principal: CurrentPrincipal, payments: Payments
) -> PaymentView:
    row = await payments.records.one(payment_id)
    if row is None or not principal.may_read_account(row.account_id):
        raise errors.AccountNotVisible(f"payment {payment_id} not found")
    return payment_view(row)


def create_router(payments: PaymentsApp, *, hubspot_signed_url: str | None) -> Router:
    async def provide_payments() -> PaymentsApp:
        return payments

    return Router(
        path="/",
        route_handlers=[
            receive_stripe_event,
            hubspot_route(hubspot_signed_url),
            open_topup_checkout,
            open_invoice_checkout,
            set_payment_profile,
            read_payment_profile,
            list_payments,
            read_payment,
        ],
        dependencies={"payments": Provide(provide_payments)},
    )
