"""HTTP routes of the sync service: connecting Xero, status, dead letters, mappings, webhooks.

Operator routes need a bearer token with the `operator` scope. The OAuth callback is public
(the browser comes back from Xero without our token): it is authenticated by the single-use
state, which only the browser holding the binding cookie set by `authorize` may redeem. The
Xero webhook is public and authenticated by its signature; its answers have empty bodies,
as Xero requires.
"""

from __future__ import annotations

from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.response import Redirect

from contracts.http.sync import DeadLettersPage, RetryAccepted, SyncStatus
from contracts.ids import KEY_LENGTH_MAX, KEY_PATTERN
from services.http import (
    BEARER_SECURITY,
    OPERATOR,
    CurrentPrincipal,
    problem_responses,
    requires_scope,
)
from sync_service.app import SyncApp
from sync_service.domain import errors
from sync_service.domain.pkce import STATE_TTL_S

EXCEPTION_STATUSES: Final[dict[type[Exception], tuple[int, str]]] = {
    errors.AuthorizationRefused: (400, "authorization-refused"),
    errors.InvalidMapping: (422, "invalid-mapping"),
    errors.ConnectionNotFound: (404, "not-found"),
    errors.DeadLetterNotFound: (404, "not-found"),
    errors.TargetNotConfigured: (409, "target-not-configured"),
    errors.ProviderUnauthorized: (503, "provider-refused-credentials"),
    errors.ProviderError: (503, "provider-unavailable"),
}
BINDING_COOKIE: Final = "sync_xero_oauth"
CALLBACK_PATH: Final = "/v1/connections/xero"
_OPERATOR = [requires_scope(OPERATOR)]
_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Sync = NamedDependency[SyncApp]


class ConnectedOrganisationView(msgspec.Struct, frozen=True, kw_only=True):
    connection_id: str
    name: str
    is_default: bool


class ConnectedView(msgspec.Struct, frozen=True, kw_only=True):
    connected: list[ConnectedOrganisationView]


class AuthorizeView(msgspec.Struct, frozen=True, kw_only=True):
    authorize_url: str


class ProductMappingBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    connection_id: str = "*"
    item_code: _Text | None = None
    account_code: _Text | None = None
    tax_type: _Text | None = None


class TaxMappingBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tax_type: _Text
    vat_rate: str = "*"
    connection_id: str = "*"


class CompanyLinkBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    company_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}$")]


class AccountConnectionBody(msgspec.Struct, frozen=True, kw_only=True,
                            forbid_unknown_fields=True):
    connection_id: str


# -- connecting Xero --------------------------------------------------------------------------


@get("/v1/connections/xero/authorize", summary="Start connecting a Xero organisation",
     description="Redirects (302) to Xero's consent page (OAuth 2.0 with PKCE S256). The "
     "state is bound to the operator and to this browser (a cookie) and expires in 10 "
     "minutes. With `?redirect=false` the URL is returned as JSON instead (the cookie is "
     "still set).",
     responses=problem_responses(400, 401, 403, 409), tags=["connections"], guards=_OPERATOR,
     security=BEARER_SECURITY, status_code=302)
async def authorize_xero(principal: CurrentPrincipal, sync: Sync,
                         redirect: FromQuery[bool] = True) -> Response[Any]:
    started = await sync.connections.begin(principal.sub)
    cookie = Cookie(key=BINDING_COOKIE, value=started.binding, path=CALLBACK_PATH,
                    max_age=STATE_TTL_S, httponly=True, samesite="lax")
    if redirect:
        return Redirect(path=started.url, status_code=302, cookies=[cookie])
    return Response(AuthorizeView(authorize_url=started.url), status_code=200, cookies=[cookie])


@get("/v1/connections/xero/callback", summary="Xero sends the operator back here",
     description="Exchanges the code (with the PKCE verifier), reads the organisations the "
     "consent reached and stores their credentials, encrypted. A state that is unknown, "
     "expired, already used or from another browser is refused, as is a code Xero refuses.",
     responses=problem_responses(400, 409), tags=["connections"])
async def xero_callback(
    request: Request[Any, Any, Any],
    sync: Sync,
    oauth_state: Annotated[str | None, QueryParameter(name="state", max_length=256)] = None,
    code: Annotated[str | None, QueryParameter(max_length=2048)] = None,
    error: Annotated[str | None, QueryParameter(max_length=256)] = None,
) -> Response[ConnectedView]:
    state = oauth_state
    if error is not None or not state or not code:
        raise errors.AuthorizationRefused("Xero did not grant the authorization")
    connected = await sync.connections.complete(
        code=code, state=state, binding=request.cookies.get(BINDING_COOKIE))
    view = ConnectedView(connected=[ConnectedOrganisationView(
        connection_id=c.connection_id, name=c.name, is_default=c.is_default) for c in connected])
    return Response(view, status_code=200,
                    cookies=[Cookie(key=BINDING_COOKIE, value="", path=CALLBACK_PATH,
                                    max_age=0, httponly=True)])


TenantId = Annotated[str, PathParameter(min_length=1, max_length=64)]


@delete("/v1/connections/xero/{tenant_id:str}", summary="Disconnect a Xero organisation",
        description="Removes the organisation from our Xero app and revokes the grant once "
        "none of its organisations remains. Queued changes stay, visible in the status.",
        responses=problem_responses(400, 401, 403, 404, 409), tags=["connections"],
        guards=_OPERATOR, security=BEARER_SECURITY, status_code=204)
async def disconnect_xero(tenant_id: TenantId, sync: Sync) -> None:
    await sync.connections.disconnect(tenant_id)


@post("/v1/connections/xero/{tenant_id:str}/disconnect", summary="Disconnect (POST form)",
      responses=problem_responses(400, 401, 403, 404, 409), tags=["connections"],
      guards=_OPERATOR, security=BEARER_SECURITY, status_code=204)
async def disconnect_xero_post(tenant_id: TenantId, sync: Sync) -> None:
    await sync.connections.disconnect(tenant_id)


@put("/v1/connections/xero/{tenant_id:str}/default", summary="Make it the default connection",
     responses=problem_responses(400, 401, 403, 404), tags=["connections"], guards=_OPERATOR,
     security=BEARER_SECURITY, status_code=204)
async def set_default_connection(tenant_id: TenantId, sync: Sync) -> None:
    await sync.mappings.set_default(tenant_id)


# -- status and dead letters ------------------------------------------------------------------


@get("/v1/sync/status", summary="How synchronisation with each target is doing",
     responses=problem_responses(400, 401, 403), tags=["sync"], guards=_OPERATOR,
     security=BEARER_SECURITY)
async def sync_status(sync: Sync) -> SyncStatus:
    return await sync.status.status()


@get("/v1/sync/dead-letters", summary="Changes given up on",
     responses=problem_responses(400, 401, 403), tags=["sync"], guards=_OPERATOR,
     security=BEARER_SECURITY)
async def list_dead_letters(sync: Sync, limit: FromQuery[int] = 100) -> DeadLettersPage:
    return DeadLettersPage(dead_letters=await sync.status.dead_letters(limit))


@post("/v1/sync/dead-letters/{dead_letter_id:int}/retry", summary="Re-drive one dead letter",
      description="Queues the change again; an earlier attempt whose outcome is unknown is "
      "looked up in Xero before anything is created.",
      responses=problem_responses(400, 401, 403, 404), tags=["sync"], guards=_OPERATOR,
      security=BEARER_SECURITY, status_code=202)
async def retry_dead_letter(dead_letter_id: FromPath[int], sync: Sync) -> RetryAccepted:
    if not await sync.queue.redrive(dead_letter_id):
        raise errors.DeadLetterNotFound(str(dead_letter_id))
    sync.wake()
    return RetryAccepted(dead_letter_id=dead_letter_id, requeued=True)


@post("/v1/sync/invoices/{invoice_id:str}/resync", summary="Push an invoice again",
      responses=problem_responses(400, 401, 403, 404), tags=["sync"], guards=_OPERATOR,
      security=BEARER_SECURITY, status_code=202)
async def resync_invoice(
    invoice_id: Annotated[str, PathParameter(min_length=1, max_length=KEY_LENGTH_MAX,
                                             pattern=KEY_PATTERN)],
    sync: Sync,
) -> dict[str, int]:
    requeued = await sync.queue.resync_invoice(invoice_id)
    if not requeued:
        raise errors.DeadLetterNotFound(invoice_id)
    sync.wake()
    return {"requeued": requeued}


class CataloguePullView(msgspec.Struct, frozen=True, kw_only=True):
    version: str | None
    changed: bool
    products: int
    rejected: list[str]


@post("/v1/sync/hubspot/catalog/pull", summary="Pull the HubSpot product catalogue now",
      description="Publishes catalog.v1.prices_updated with a new version only if the "
      "validated list changed; rejected rows are listed.",
      responses=problem_responses(400, 401, 403, 409, 503), tags=["sync"], guards=_OPERATOR,
      security=BEARER_SECURITY, status_code=200)
async def pull_hubspot_catalogue(sync: Sync) -> CataloguePullView:
    if sync.hubspot_catalogue is None:
        raise errors.TargetNotConfigured("HubSpot is not configured (HUBSPOT_ACCESS_TOKEN)")
    result = await sync.hubspot_catalogue.pull()
    return CataloguePullView(version=result.version, changed=result.changed,
                             products=result.products, rejected=result.rejected[:100])


# -- mappings ---------------------------------------------------------------------------------


@put("/v1/sync/mappings/products/{product:str}", summary="Map a product to Xero codes",
     description="`*` is the fallback product; `connection_id` `*` applies to every "
     "organisation.", responses=problem_responses(400, 401, 403, 422), tags=["mappings"],
     guards=_OPERATOR, security=BEARER_SECURITY, status_code=204)
async def map_product(product: FromPath[str], data: JSONBody[ProductMappingBody], sync: Sync) -> None:
    await sync.mappings.set_product(product=product, connection_id=data.connection_id,
                                    item_code=data.item_code, account_code=data.account_code,
                                    tax_type=data.tax_type)


@put("/v1/sync/mappings/tax-types/{vat_treatment:str}", summary="Map a VAT treatment to a "
     "Xero TaxType", responses=problem_responses(400, 401, 403, 422), tags=["mappings"],
     guards=_OPERATOR, security=BEARER_SECURITY, status_code=204)
async def map_tax_type(vat_treatment: FromPath[str], data: JSONBody[TaxMappingBody], sync: Sync) -> None:
    await sync.mappings.set_tax_type(vat_treatment=vat_treatment, tax_type=data.tax_type,
                                     vat_rate=data.vat_rate, connection_id=data.connection_id)


@put("/v1/sync/accounts/{account_id:uuid}/connection", summary="Send an account's documents "
     "to one organisation", responses=problem_responses(400, 401, 403, 404), tags=["mappings"],
     guards=_OPERATOR, security=BEARER_SECURITY, status_code=204)
async def assign_account(account_id: FromPath[UUID], data: JSONBody[AccountConnectionBody],
                         sync: Sync) -> None:
    await sync.mappings.assign_account(account_id, data.connection_id)


@put("/v1/sync/accounts/{account_id:uuid}/hubspot-company", summary="Link an account to its "
     "HubSpot company", description="Its invoices are associated with that company instead "
     "of one found or created by `billing_account_id`.",
     responses=problem_responses(400, 401, 403, 422), tags=["mappings"], guards=_OPERATOR,
     security=BEARER_SECURITY, status_code=204)
async def link_hubspot_company(account_id: FromPath[UUID], data: JSONBody[CompanyLinkBody],
                               sync: Sync) -> None:
    await sync.mappings.link_company(account_id, data.company_id)


# -- webhooks ---------------------------------------------------------------------------------


@post("/v1/webhooks/xero", summary="Receive Xero webhook events",
      description="x-xero-signature verified on the raw body: 200 with an empty body when "
      "valid (intent-to-receive included), 401 with an empty body otherwise.",
      responses={401: ResponseSpec(None, media_type="text/plain",
                                   description="Signature missing or wrong; empty body"),
                 **problem_responses(400, 415)},
      tags=["webhooks"], status_code=200)
async def receive_xero_webhook(request: Request[Any, Any, Any], sync: Sync) -> Response[bytes]:
    body = await request.body()
    try:
        await sync.webhooks.receive(body, request.headers.get("x-xero-signature"))
    except errors.SignatureRejected:
        return Response(b"", status_code=401, media_type="text/plain")
    return Response(b"", status_code=200, media_type="text/plain")


def create_router(sync: SyncApp) -> Router:
    async def provide_sync() -> SyncApp:
        return sync

    return Router(
        path="/",
        route_handlers=[authorize_xero, xero_callback, disconnect_xero, disconnect_xero_post,
                        set_default_connection, sync_status, list_dead_letters,
                        retry_dead_letter, resync_invoice, map_product, map_tax_type,
                        assign_account, link_hubspot_company, receive_xero_webhook,
                        pull_hubspot_catalogue],
        dependencies={"sync": Provide(provide_sync)},
    )
