"""HTTP routes of the invoicing service: invoices, credit notes, voids, billing runs and
billing profiles (CONTRACTS.md). Portal tokens read their own account only (another
account's invoice is 404, enforced by the route and by row-level security); writes are for
operators and take an Idempotency-Key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Final
from uuid import UUID

import msgspec
import structlog
from litestar import Response, Router, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from contracts.http.invoicing import (
    EMAIL_PATTERN,
    INVOICES_PAGE_MAX,
    BillingRunRequest,
    BillingRunView,
    CreditNoteRequest,
    CreditNoteView,
    InvoicesPage,
    InvoiceStatus,
    InvoiceView,
    VoidRequest,
)
from contracts.ids import KEY_LENGTH_MAX, KEY_PATTERN
from contracts.money import to_micros
from invoicing_service.app.billing import BillingRuns
from invoicing_service.app.customers import BillingProfile, Customers
from invoicing_service.app.documents import CreditNoteDocument, Documents, InvoiceDocument
from invoicing_service.app.invoices import Invoices, request_hash
from invoicing_service.app.issued_documents import DocumentIssuer, render
from invoicing_service.app.queries import PAGE_SIZE_DEFAULT, InvoiceFilter, InvoiceQueries
from invoicing_service.documents import document_sha256
from invoicing_service.domain import errors
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

EXCEPTION_STATUSES: Final[dict[type[Exception], tuple[int, str]]] = {
    errors.InvalidRequest: (422, "invalid-request"),
    errors.BadCursor: (400, "invalid-cursor"),  # the problem type payments uses
    errors.InvoiceNotFound: (404, "not-found"),
    errors.BillingRunNotFound: (404, "not-found"),
    errors.AccountNotVisible: (404, "not-found"),
    errors.InvoiceNotIssuable: (409, "invoice-not-issuable"),
    errors.InvoiceNotVoidable: (409, "invoice-not-voidable"),
    errors.InvoiceNotPayable: (409, "invoice-not-payable"),
    errors.InvoiceNotCreditable: (409, "invoice-not-creditable"),
    errors.CreditExceedsInvoice: (422, "credit-exceeds-invoice"),
    errors.PeriodNotBillable: (422, "period-not-billable"),
    errors.IdempotencyKeyReused: (409, "idempotency-key-reused"),
}

log = structlog.get_logger(__name__)

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, min_length=1,
                    max_length=KEY_LENGTH_MAX, pattern=KEY_PATTERN,
                    description="Repeat a request with the same key and body to get the same answer."),
]
_READERS = [requires_any_scope(PORTAL, OPERATOR)]
_OPERATORS = [requires_scope(OPERATOR)]


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the routes use, provided as one dependency."""

    invoices: Invoices
    queries: InvoiceQueries
    runs: BillingRuns
    customers: Customers
    documents: Documents
    issuer: DocumentIssuer


class BillingProfileBody(msgspec.Struct, frozen=True, kw_only=True):
    """PUT /v1/accounts/{id}/billing-profile: what invoices print about the customer."""

    legal_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    address_lines: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
                             msgspec.Meta(max_length=8)] = []
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$(?!\n)")] | None = None
    billing_email: Annotated[str, msgspec.Meta(
        pattern=EMAIL_PATTERN, max_length=254)] | None = None
    po_number: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    net_terms_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 30
    vat_exemption: Annotated[
        str | None,
        msgspec.Meta(description="zero_rated, exempt or outside_scope: wins over the VAT "
                     "the tax profile would give"),
    ] = None


class BillingProfileView(BillingProfileBody, frozen=True, kw_only=True):
    account_id: UUID


class CreditNotesPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[CreditNoteView]


def tenant_of(principal: Principal) -> UUID | None:
    """None for operators (every row); the portal token's own account otherwise."""
    if principal.is_operator:
        return None
    try:
        return UUID(principal.tenant_id or "")
    except ValueError:
        raise errors.AccountNotVisible("this token names no account") from None


def invoice_uuid(invoice_id: str) -> UUID:
    try:
        return UUID(invoice_id)
    except ValueError:
        raise errors.InvoiceNotFound(f"invoice {invoice_id} not found") from None


# -- invoices --------------------------------------------------------------------------------


@get("/v1/invoices", summary="Invoices, newest first, with totals by status and currency",
     description="Filters account_id and status; pass next_cursor back as cursor. A portal "
     "token sees its own account's invoices only.",
     responses=problem_responses(400, 401, 403, 404), tags=["invoices"], guards=_READERS,
     security=BEARER_SECURITY)
async def list_invoices(
    principal: CurrentPrincipal, services: NamedDependency[Services],
    account_id: FromQuery[UUID | None] = None,
    status: FromQuery[InvoiceStatus | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=INVOICES_PAGE_MAX)] = PAGE_SIZE_DEFAULT,
    cursor: Annotated[str | None, QueryParameter(min_length=1, max_length=512)] = None,
) -> Response[InvoicesPage]:
    tenant = tenant_of(principal)
    if tenant is not None:
        if account_id is not None and account_id != tenant:
            raise errors.AccountNotVisible(f"account {account_id} not found")
        account_id = tenant
    page, route = await services.queries.page(
        InvoiceFilter(account_id=account_id, status=status), tenant_id=tenant, limit=limit,
        cursor=cursor)
    return Response(page, headers=route.headers())


@get("/v1/invoices/{invoice_id:str}", summary="One invoice with its lines and VAT breakdown",
     responses=problem_responses(401, 403, 404), tags=["invoices"], guards=_READERS,
     security=BEARER_SECURITY)
async def read_invoice(invoice_id: FromPath[str], principal: CurrentPrincipal,
                       services: NamedDependency[Services]) -> InvoiceView:
    return await services.queries.invoice(invoice_uuid(invoice_id), tenant_id=tenant_of(principal))


@get("/v1/invoices/{invoice_id:str}/pdf", summary="The invoice as a PDF (a UK VAT invoice)",
     description="Renders the same bytes every time; X-Document-SHA256 is the hash recorded"
     " when the invoice was issued (absent until the document task has rendered it, moments"
     " after issue). A draft is marked 'not a VAT invoice'.",
     responses={200: ResponseSpec(None, media_type="application/pdf",
                                  description="application/pdf"),
                **problem_responses(401, 403, 404)},
     tags=["invoices"], guards=_READERS, security=BEARER_SECURITY)
async def invoice_pdf(invoice_id: FromPath[str], principal: CurrentPrincipal,
                      services: NamedDependency[Services]) -> Response[bytes]:
    document = await services.documents.invoice(invoice_uuid(invoice_id),
                                                tenant_id=tenant_of(principal))
    return await pdf_response(services, document, document.view.invoice_id,
                              document.view.number or f"draft-{document.view.invoice_id}")


@get("/v1/credit-notes/{credit_note_id:str}/pdf", summary="A credit note as a PDF",
     responses={200: ResponseSpec(None, media_type="application/pdf",
                                  description="application/pdf"),
                **problem_responses(401, 403, 404)},
     tags=["invoices"], guards=_READERS, security=BEARER_SECURITY)
async def credit_note_pdf(credit_note_id: FromPath[str], principal: CurrentPrincipal,
                          services: NamedDependency[Services]) -> Response[bytes]:
    document = await services.documents.credit_note(invoice_uuid(credit_note_id),
                                                    tenant_id=tenant_of(principal))
    return await pdf_response(services, document, document.view.credit_note_id,
                              document.view.number)


async def pdf_response(services: Services, document: InvoiceDocument | CreditNoteDocument,
                       document_id: str, number: str) -> Response[bytes]:
    pdf = await asyncio.to_thread(render, document)
    sha256 = document_sha256(pdf)
    recorded = await services.issuer.recorded_sha256(UUID(document_id))
    if recorded is not None and recorded != sha256:
        # The renderer or the data changed since issue: say so rather than serve it silently.
        log.error("document renders differently from when it was issued", number=number,
                  recorded=recorded, rendered=sha256)
    headers = {"Content-Disposition": f'inline; filename="{number}.pdf"',
               "X-Document-SHA256": sha256}
    if recorded is not None:
        headers["X-Document-SHA256-Issued"] = recorded
    return Response(pdf, media_type="application/pdf", headers=headers)


@get("/v1/invoices/{invoice_id:str}/credit-notes", summary="Credit notes of an invoice",
     responses=problem_responses(401, 403, 404), tags=["invoices"], guards=_READERS,
     security=BEARER_SECURITY)
async def list_credit_notes(invoice_id: FromPath[str], principal: CurrentPrincipal,
                            services: NamedDependency[Services]) -> CreditNotesPage:
    tenant = tenant_of(principal)
    await services.queries.invoice(invoice_uuid(invoice_id), tenant_id=tenant)  # 404s
    return CreditNotesPage(items=await services.queries.credit_notes(invoice_uuid(invoice_id),
                                                                     tenant_id=tenant))


@post("/v1/invoices/{invoice_id:str}/void", status_code=200, summary="Void an unpaid invoice",
      description="Only an open or overdue invoice with nothing paid on it; its number stays "
      "used. Publishes invoicing.v1.voided.",
      responses=problem_responses(400, 401, 403, 404, 409, 422), tags=["invoices"],
      guards=_OPERATORS, security=BEARER_SECURITY)
async def void_invoice(invoice_id: FromPath[str], data: JSONBody[VoidRequest],
                       services: NamedDependency[Services],
                       idempotency_key: IdempotencyKey = None) -> InvoiceView:
    return await asyncio.to_thread(services.invoices.void, invoice_uuid(invoice_id), data.reason,
                                   idempotency_key)


@post("/v1/invoices/{invoice_id:str}/credit-notes", status_code=201,
      summary="Issue a credit note against an invoice",
      description="`amount` (excluding VAT) absent credits all that is left; VAT is reversed at "
      "the invoice's rates; never more than is left. Own number series CN-YYYY-NNNNNN.",
      responses=problem_responses(400, 401, 403, 404, 409, 422), tags=["invoices"],
      guards=_OPERATORS, security=BEARER_SECURITY)
async def issue_credit_note(invoice_id: FromPath[str], data: JSONBody[CreditNoteRequest],
                            services: NamedDependency[Services],
                            idempotency_key: IdempotencyKey = None) -> CreditNoteView:
    net = None if data.amount is None else to_micros(data.amount)
    return await asyncio.to_thread(services.invoices.credit, invoice_uuid(invoice_id), net,
                                   data.reason, idempotency_key)


# -- billing runs ------------------------------------------------------------------------------


@post("/v1/billing-runs", summary="Run a month's billing (idempotent per period)",
      description="Creates the period's run (202) or returns the existing one (200); it runs in "
      "the background: poll GET /v1/billing-runs/{id}. The current or a future month is "
      "refused (422).",
      status_code=202,
      responses={200: ResponseSpec(BillingRunView, description="The period's run existed"),
                 **problem_responses(400, 401, 403, 409, 422)}, tags=["billing-runs"],
      guards=_OPERATORS, security=BEARER_SECURITY)
async def request_billing_run(data: JSONBody[BillingRunRequest],
                              services: NamedDependency[Services],
                              idempotency_key: IdempotencyKey = None) -> Response[BillingRunView]:
    if idempotency_key is not None:
        await services.runs.claim_request_key(idempotency_key, request_hash(data.period))
    view, created = await services.runs.request(data.period)
    return Response(view, status_code=202 if created else 200)


@get("/v1/billing-runs/{billing_run_id:str}", summary="Status and progress of a billing run",
     responses=problem_responses(401, 403, 404), tags=["billing-runs"], guards=_OPERATORS,
     security=BEARER_SECURITY)
async def read_billing_run(billing_run_id: FromPath[str],
                           services: NamedDependency[Services]) -> BillingRunView:
    return await services.runs.view(billing_run_id)


# -- billing profiles ------------------------------------------------------------------------


def _profile_view(account_id: UUID, profile: BillingProfile) -> BillingProfileView:
    return BillingProfileView(account_id=account_id, legal_name=profile.legal_name,
                              address_lines=list(profile.address_lines), country=profile.country,
                              billing_email=profile.billing_email, po_number=profile.po_number,
                              net_terms_days=profile.net_terms_days,
                              vat_exemption=profile.vat_exemption)


@put("/v1/accounts/{account_id:uuid}/billing-profile",
     summary="Set what invoices print about the customer",
     description="Legal name, address, billing email, PO number, net terms (default 30 days) "
     "and a VAT exemption. PUT replaces the whole profile (idempotent by nature).",
     responses=problem_responses(400, 401, 403, 422), tags=["accounts"], guards=_OPERATORS,
     security=BEARER_SECURITY)
async def set_billing_profile(account_id: FromPath[UUID], data: JSONBody[BillingProfileBody],
                              services: NamedDependency[Services]) -> BillingProfileView:
    if data.vat_exemption not in (None, "zero_rated", "exempt", "outside_scope"):
        raise errors.InvalidRequest("vat_exemption is zero_rated, exempt or outside_scope")
    profile = BillingProfile(legal_name=data.legal_name, address_lines=list(data.address_lines),
                             country=data.country, billing_email=data.billing_email,
                             po_number=data.po_number, net_terms_days=data.net_terms_days,
                             vat_exemption=data.vat_exemption)  # type: ignore[arg-type]
    await services.customers.set_profile(account_id, profile)
    return _profile_view(account_id, profile)


@get("/v1/accounts/{account_id:uuid}/billing-profile", summary="An account's billing profile",
     responses=problem_responses(401, 403, 404), tags=["accounts"], guards=_READERS,
     security=BEARER_SECURITY)
async def read_billing_profile(account_id: FromPath[UUID], principal: CurrentPrincipal,
                               services: NamedDependency[Services]) -> BillingProfileView:
    if not principal.may_read_account(account_id):
        raise errors.AccountNotVisible(f"account {account_id} not found")
    profile = await services.customers.profile(account_id, tenant_of(principal))
    if profile is None:
        raise errors.AccountNotVisible(f"account {account_id} has no billing profile")
    return _profile_view(account_id, profile)


def create_router(services: Services) -> Router:
    async def provide_services() -> Services:
        return services

    return Router(
        path="/",
        route_handlers=[list_invoices, read_invoice, invoice_pdf, credit_note_pdf,
                        list_credit_notes, void_invoice,
                        issue_credit_note, request_billing_run, read_billing_run,
                        set_billing_profile, read_billing_profile],
        dependencies={"services": Provide(provide_services)},
    )
