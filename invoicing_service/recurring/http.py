"""HTTP routes of recurring items (CONTRACTS.md, invoicing_service): create (operator,
Idempotency-Key), list with charges (portal: its own account; operator), cancel (operator),
and an operator's renewal run (with a manual clock only where the settings allow it)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody

from contracts.http.invoicing import (
    CancelRecurringItem,
    ChangeRecurringItem,
    ChangeRecurringPlan,
    CreateRecurringItem,
    RecurringItemsPage,
    RecurringItemView,
    RecurringRunRequest,
    RecurringRunView,
)
from contracts.ids import KEY_LENGTH_MAX
from invoicing_service.recurring.app.items import ConflictingIdempotencyKey, RecurringItems, request_hash
from invoicing_service.recurring.app.renewals import Renewals
from invoicing_service.recurring.domain import (
    InsufficientFunds,
    InvalidItem,
    ItemCancelled,
    ItemNotChangeable,
    ItemNotFound,
    LedgerRefusal,
    LedgerUnavailable,
    ReferenceInUse,
    UnknownProduct,
)
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

JSON: Final = "application/json"
_KEY = re.compile(rf"[\x21-\x7e]{{1,{KEY_LENGTH_MAX}}}")
EXCEPTION_STATUSES: Final[dict[type[Exception], tuple[int, str]]] = {
    UnknownProduct: (422, "unknown-product"),
    InvalidItem: (422, "invalid-item"),
    ReferenceInUse: (409, "reference-in-use"),
    ItemNotFound: (404, "not-found"),
    ItemCancelled: (409, "item-cancelled"),
    ConflictingIdempotencyKey: (409, "idempotency-key-reused"),
    ItemNotChangeable: (409, "item-not-changeable"),
    InsufficientFunds: (422, "insufficient-funds"),
    LedgerRefusal: (422, "ledger-refused"),
    LedgerUnavailable: (503, "ledger-unavailable"),
}
IdempotencyKey = Annotated[
    str,
    HeaderParameter(name="Idempotency-Key", required=True, pattern=f"^{_KEY.pattern}$",
                    min_length=1, max_length=KEY_LENGTH_MAX,
                    description="Makes the creation safe to retry: 1-128 visible ASCII"),
]
OPERATOR_ONLY: Final[dict[str, Any]] = {"guards": [requires_scope(OPERATOR)],
                                        "security": BEARER_SECURITY}
READERS: Final[dict[str, Any]] = {"guards": [requires_any_scope(PORTAL, OPERATOR)],
                                  "security": BEARER_SECURITY}
_encode = msgspec.json.Encoder().encode


class RecurringServices:
    """What the routes need; main.py fills it at start-up."""

    def __init__(self, items: RecurringItems, renewals: Renewals, *,
                 manual_clock: bool) -> None:
        self.items = items
        self.renewals = renewals
        self.manual_clock = manual_clock


Services = NamedDependency[RecurringServices]


def check_may_read(principal: Principal, account_id: UUID) -> None:
    if not principal.may_read_account(account_id):
        raise NotFoundException(detail=f"account {account_id} not found")


@post("/v1/accounts/{account_id:uuid}/recurring-items", summary="Add a recurring item",
      description="A number or keyword billed every month: the setup fee and the first"
      " (prorated) month are charged through the ledger as soon as it starts, then each"
      " month on the 1st. Refused with nothing written: unknown product, quantity < 1, end"
      " before start, a reference already on a live item.",
      status_code=201, **OPERATOR_ONLY,
      responses={201: ResponseSpec(RecurringItemView, generate_examples=False,
                                   description="The item with its charges so far"),
                 **problem_responses(400, 401, 403, 409, 422)})
async def create_item(
    request: Request[Any, Any, Any], account_id: FromPath[UUID],
    data: JSONBody[CreateRecurringItem], svc: Services,
    idempotency_key: IdempotencyKey,
) -> Response[bytes]:
    if not _KEY.fullmatch(idempotency_key):
        raise ValidationException(
            detail="Idempotency-Key must be 1-128 visible ASCII characters",
            extra=[{"key": "Idempotency-Key", "message": "invalid key", "source": "header"}])
    response, replayed = await svc.items.create(account_id, data, idempotency_key,
                                                request_hash(await request.body()))
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(response, status_code=201, media_type=JSON, headers=headers)


@get("/v1/accounts/{account_id:uuid}/recurring-items",
     summary="An account's recurring items and their charges", **READERS,
     responses=problem_responses(401, 403, 404))
async def list_items(account_id: FromPath[UUID], svc: Services,
                     principal: CurrentPrincipal) -> RecurringItemsPage:
    check_may_read(principal, account_id)
    return await svc.items.list(account_id)


@post("/v1/recurring-items/{item_id:uuid}/cancel", summary="Cancel now or at period end",
      status_code=200, **OPERATOR_ONLY, responses=problem_responses(400, 401, 403, 404))
async def cancel_item(item_id: FromPath[UUID], data: JSONBody[CancelRecurringItem],
                      svc: Services, principal: CurrentPrincipal) -> RecurringItemView:
    return await svc.items.cancel(item_id, data.at, principal.sub[:200])


@post("/v1/recurring-items/{item_id:uuid}/plan-change",
      summary="Change product or quantity from next month",
      description="The current month keeps its plan (charged in advance); from the 1st of"
      " next month the item is charged on the new one. A second change replaces the first.",
      status_code=200, **OPERATOR_ONLY, responses=problem_responses(400, 401, 403, 404, 409, 422))
async def change_plan(item_id: FromPath[UUID], data: JSONBody[ChangeRecurringPlan],
                      svc: Services, principal: CurrentPrincipal) -> RecurringItemView:
    return await svc.items.change_plan(item_id, data, principal.sub[:200])


@post("/v1/recurring-items/{item_id:uuid}/change",
      summary="Change product or quantity, from next month or at once with proration",
      description="`effective: next_period` as plan-change. `effective: now`: the unused days"
      " of this month on the current plan are credited back (a ledger adjustment) and the new"
      " plan is charged for today to the month's end (a ledger fee), both prorated by days as"
      " for a start or an end, once per Idempotency-Key. Absent `effective`: the product's"
      " setting. Refused with nothing written: unknown product, the same plan, a quantity"
      " below 1, a cancelled, past-due or suspended item, the ledger refusing the new"
      " charge for funds (422 insufficient-funds).",
      status_code=200, **OPERATOR_ONLY,
      responses={200: ResponseSpec(RecurringItemView, generate_examples=False,
                                   description="The item with its charges and changes"),
                 **problem_responses(400, 401, 403, 404, 409, 422, 503)})
async def change_item(
    request: Request[Any, Any, Any], item_id: FromPath[UUID],
    data: JSONBody[ChangeRecurringItem], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey,
) -> Response[bytes]:
    if not _KEY.fullmatch(idempotency_key):
        raise ValidationException(
            detail="Idempotency-Key must be 1-128 visible ASCII characters",
            extra=[{"key": "Idempotency-Key", "message": "invalid key", "source": "header"}])
    response, replayed = await svc.items.change(item_id, data, idempotency_key,
                                                request_hash(await request.body()),
                                                principal.sub[:200])
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(response, status_code=200, media_type=JSON, headers=headers)


@post("/v1/recurring-runs", summary="Run the renewals now",
      description="What the scheduler does on its own every RECURRING_POLL_INTERVAL_S."
      " `as_of` (a day to run as if it were today) needs RECURRING_MANUAL_CLOCK=true,"
      " which production refuses.",
      status_code=200, **OPERATOR_ONLY, responses=problem_responses(400, 401, 403))
async def run_renewals(data: JSONBody[RecurringRunRequest],
                       svc: Services) -> RecurringRunView:
    if data.as_of is not None and not svc.manual_clock:
        raise PermissionDeniedException(
            detail="as_of needs RECURRING_MANUAL_CLOCK=true (never in production)")
    today = data.as_of or svc.renewals.clock().date()
    counts = await svc.renewals.run(today)
    return RecurringRunView(as_of=today, planned=counts.planned, charged=counts.charged,
                            refused=counts.refused, failed=counts.failed,
                            suspended=counts.suspended, ended=counts.ended)


def router(services: RecurringServices) -> Router:
    return Router(
        path="/",
        route_handlers=[create_item, list_items, cancel_item, change_plan, change_item,
                        run_renewals],
        dependencies={"svc": Provide(lambda: services, sync_to_thread=False)},
        tags=["recurring items"],
    )
