"""The ledger's HTTP API (CONTRACTS.md, ledger_service): accounts, balances, operator writes.

Writes take an optional ``Idempotency-Key``: a replay with the same body returns the first
response (with ``Idempotent-Replayed: true``); the same key with another body is 409.
A portal token reads only its own account; any other account is 404, never 403.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get, patch, post, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter
from psycopg_pool import AsyncConnectionPool

from contracts.http.ledger import (
    AccountView,
    Adjustment,
    BalanceView,
    ChargeFee,
    ChargeFees,
    FeeOutcomes,
    FeeView,
    GrantCredit,
    GrantView,
    OpenAccount,
    PatchAccount,
    PostedView,
    PriceOverride,
    PriceOverrideView,
    RefundRequest,
)
from contracts.ids import KEY_LENGTH_MAX
from ledger_service.app import accounts
from ledger_service.app.accounts import Idempotency, Outcome
from ledger_service.app.ledger import (
    AccountExists,
    AccountNotFound,
    ConflictingIdempotencyKey,
    Ledger,
    request_hash,
)
from ledger_service.domain import errors
from ledger_service.messaging import Writer
from ledger_service.projections import reads
from ledger_service.reader import Readers
from services.http import (
    BEARER_SECURITY,
    OPERATOR,
    PORTAL,
    Principal,
    problem_responses,
    requires_any_scope,
    requires_scope,
)
from services.http.auth import CurrentPrincipal
from services.http.parameters import instant_parameter, parse_instant

JSON = "application/json"
_KEY = re.compile(rf"[\x21-\x7e]{{1,{KEY_LENGTH_MAX}}}")
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, pattern=_KEY.pattern,
                    min_length=1, max_length=KEY_LENGTH_MAX,
                    description="Makes the write safe to retry: 1-128 visible ASCII characters."
                                " A repeat with the same key and body answers the first"
                                " response again (Idempotent-Replayed: true); the same key"
                                " with another body is 409."),
]


def written(model: type[Any], status: int = 200, description: str = "Written") -> dict[int, ResponseSpec]:
    """The 2xx body of a write (the handler answers encoded bytes, so Litestar cannot see
    it), documented with the header a replay carries."""
    return {status: ResponseSpec(model, generate_examples=False, description=(
        f"{description}. A replay of an Idempotency-Key answers the first response again,"
        " with Idempotent-Replayed: true"))}
# The product as the price override documents it (contracts.ids.ProductKey): a path that is
# not a product key is 400, never an override the response schema would not allow.
ProductPath = Annotated[str, PathParameter(
    pattern=r"^[a-z][a-z0-9_]*$", min_length=1, max_length=64,
    description="Catalogue product key: lower-case letters, digits and underscores")]
EXCEPTION_STATUSES: dict[type[Exception], tuple[int, str]] = {
    AccountNotFound: (404, "account-not-found"),
    AccountExists: (409, "account-exists"),
    ConflictingIdempotencyKey: (409, "idempotency-key-reused"),
    errors.InvalidRequest: (422, "invalid-request"),
    errors.UnknownProduct: (422, "unknown-product"),
    errors.AccountClosed: (409, "account-closed"),
    errors.InsufficientFunds: (422, "insufficient-funds"),
    errors.CreditLimitExceeded: (422, "credit-limit-exceeded"),
    errors.HoldNotFound: (404, "hold-not-found"),
    errors.DuplicateKey: (409, "duplicate"),
    errors.EntryNotFound: (404, "entry-not-found"),
    errors.RefundExceedsDebit: (422, "refund-exceeds-debit"),
    errors.InvalidTransition: (409, "invalid-transition"),
    errors.LedgerError: (422, "ledger-rule"),
}


class LedgerServices:
    """What the routes need; main.py fills it at start-up (after migrations)."""

    ledger: Ledger
    writer: Writer
    pool: AsyncConnectionPool  # the service's pool, for projection reads
    readers: Readers  # loads for reads, off the writer (ledger_service/reader.py)
    # The id of an account opened without one; with LEDGER_DATABASES, one of this process's
    # database (ledger_service/databases.py, account_id_in).
    new_account_id: Callable[[], UUID] = staticmethod(uuid.uuid4)


Services = NamedDependency[LedgerServices]


async def idempotency(request: Request[Any, Any, Any], scope: str, key: str | None) -> Idempotency:
    if key is not None and not _KEY.fullmatch(key):
        raise ValidationException(
            detail="Idempotency-Key must be 1-128 visible ASCII characters",
            extra=[{"key": "Idempotency-Key", "message": "invalid key", "source": "header"}],
        )
    return Idempotency(scope, key, request_hash(await request.body()))


async def write(request: Request[Any, Any, Any], svc: Services, scope: str,
                key: str | None, status: int, command: Any, *args: Any) -> Response[bytes]:
    """Run an idempotent write command on the writer thread and answer with its outcome."""
    idem = await idempotency(request, scope, key)
    return respond(await svc.writer.call(command, svc.ledger, *args, idem), status)


def respond(outcome: Outcome, status: int) -> Response[bytes]:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return Response(outcome.response, status_code=status, media_type=JSON, headers=headers)


def check_may_read(principal: Principal, account_id: UUID) -> None:
    if not principal.may_read_account(account_id):
        raise NotFoundException(detail=f"account {account_id} not found")


def actor_of(principal: Principal) -> str:
    return f"{principal.sub}"[:200]


OPERATOR_ONLY = {"guards": [requires_scope(OPERATOR)], "security": BEARER_SECURITY}
READERS = {"guards": [requires_any_scope(PORTAL, OPERATOR)], "security": BEARER_SECURITY}


@post("/", summary="Open a billing account", status_code=201, **OPERATOR_ONLY,  # type: ignore[arg-type]
      responses={**written(AccountView, 201, "Opened"), **problem_responses(400, 401, 403, 409, 422)})
async def open_account(
    request: Request[Any, Any, Any], data: JSONBody[OpenAccount], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, "http:open", idempotency_key, 201,
                       partial(accounts.open_account, actor=actor_of(principal),
                               new_id=svc.new_account_id), data)


@get("/{account_id:uuid}", summary="An account's settings and state", **READERS,  # type: ignore[arg-type]
     responses={200: ResponseSpec(AccountView, generate_examples=False,
                                  description="The account's settings and state"),
                **problem_responses(401, 403, 404)})
async def get_account(account_id: FromPath[UUID], svc: Services,
                      principal: CurrentPrincipal) -> Response[bytes]:
    check_may_read(principal, account_id)
    readers = svc.readers
    # With a replica: the account's newest version from the primary, so that a replica that
    # lags cannot answer with an older account.
    head = await reads.account_head(svc.pool, account_id) if readers.routing.configured \
        else None
    view, from_replica = await readers.account_view(account_id, head)
    return respond_view(view, readers.headers(from_replica))


@patch("/{account_id:uuid}", summary="Change type, limits, threshold, basis, tier or tax",
       **OPERATOR_ONLY, responses={**written(AccountView),  # type: ignore[arg-type]
                                   **problem_responses(400, 401, 403, 404, 409, 422)})
async def patch_account(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], data: JSONBody[PatchAccount], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:patch:{account_id}", idempotency_key, 200,
                       accounts.patch_account, account_id, data, actor_of(principal))


@post("/{account_id:uuid}/close", summary="Close: no new debits or authorizations",
      status_code=200, **OPERATOR_ONLY, responses={  # type: ignore[arg-type]
          **written(AccountView, 200, "Closed (closing a closed account changes nothing)"),
          **problem_responses(400, 401, 403, 404, 409, 422)})
async def close_account(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:close:{account_id}", idempotency_key, 200,
                       accounts.close_account, account_id, "closed by operator", actor_of(principal))


@get("/{account_id:uuid}/balance", summary="Balance, available, held and credits", **READERS,  # type: ignore[arg-type]
     responses={200: ResponseSpec(BalanceView, generate_examples=False, description=(
         "From the balances projection when it has applied every event of the account"
         " (X-Account-Version), else from the account itself: never behind a committed"
         " write")), **problem_responses(400, 401, 403, 404)})
async def get_balance(
    account_id: FromPath[UUID], svc: Services, principal: CurrentPrincipal,
    as_of_text: Annotated[str | None, instant_parameter(
        "Answer from the event log for this past instant", name="as_of")] = None,
) -> Response[bytes]:
    check_may_read(principal, account_id)
    as_of = parse_instant(as_of_text, "as_of")
    readers = svc.readers
    if as_of is not None:
        head = await reads.account_head(svc.pool, account_id) \
            if readers.routing.configured else None
        (view, version), from_replica = await readers.balance_as_of(account_id, as_of, head)
        return respond_view(view, {"X-Account-Version": str(version),
                                   **readers.headers(from_replica)})
    found = await reads.fresh_balance(readers.routing, account_id, account_id)
    row = found.row
    if row is None:
        if found.head is None:
            raise NotFoundException(detail=f"account {account_id} not found")
        # The projection has not applied this account's newest events yet: load the account.
        (view, version), from_replica = await readers.balance(account_id, found.head)
        return respond_view(view, {"X-Account-Version": str(version),
                                   **readers.headers(from_replica)})
    view = accounts.balance_view_of(
        account_id, row.currency, row.account_type, row.balance_micros, row.available_micros,
        row.held_micros, row.credit_limit_micros,
        [(c["grant_id"], c["kind"], c["granted_micros"], c["remaining_micros"], c["expires_at"])
         for c in row.credits],
        datetime.now(UTC))
    return respond_view(view, {**row.headers(), **readers.headers(found.from_replica)})


_encode = msgspec.json.Encoder().encode


def respond_view(view: Any, headers: dict[str, str]) -> Response[bytes]:
    return Response(_encode(view), media_type=JSON, headers=headers)


@post("/{account_id:uuid}/credits", summary="Grant credit", status_code=201, **OPERATOR_ONLY,  # type: ignore[arg-type]
      responses={**written(GrantView, 201, "Granted"),
                 **problem_responses(400, 401, 403, 404, 409, 422)})
async def grant_credit(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], data: JSONBody[GrantCredit], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:credit:{account_id}", idempotency_key, 201,
                       accounts.grant_credit, account_id, data, actor_of(principal))


@post("/{account_id:uuid}/adjustments", summary="Adjust (credit or debit) with a memo",
      status_code=201, **OPERATOR_ONLY,  # type: ignore[arg-type]
      responses={**written(PostedView, 201, "Posted"),
                 **problem_responses(400, 401, 403, 404, 409, 422)})
async def adjust(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], data: JSONBody[Adjustment], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:adjust:{account_id}", idempotency_key, 201,
                       accounts.adjust, account_id, data, actor_of(principal))


@post("/{account_id:uuid}/refunds", summary="Refund (part of) a debit", status_code=201,
      **OPERATOR_ONLY, responses={**written(PostedView, 201, "Refunded"),  # type: ignore[arg-type]
                                  **problem_responses(400, 401, 403, 404, 409, 422)})
async def refund(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], data: JSONBody[RefundRequest], svc: Services,
    principal: CurrentPrincipal, idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:refund:{account_id}", idempotency_key, 201,
                       accounts.refund, account_id, data, actor_of(principal))


RequiredIdempotencyKey = Annotated[
    str,
    HeaderParameter(name="Idempotency-Key", required=True, pattern=f"^{_KEY.pattern}$",
                    min_length=1, max_length=KEY_LENGTH_MAX,
                    description="Required, 1-128 visible ASCII characters: the charge key is a"
                                " good choice"),
]


@post("/{account_id:uuid}/charges", summary="Charge a recurring or one-off fee",
      description="Priced from the catalogue or the account's override, prorated by days if"
      " asked; once per charge_key. Prepay and trial accounts are refused (422"
      " insufficient-funds, nothing written) when available funds do not cover it; postpay"
      " accounts are always charged.",
      status_code=201, **OPERATOR_ONLY,  # type: ignore[arg-type]
      responses={201: ResponseSpec(FeeView, generate_examples=False,
                                   description="The fee entry; a replay answers the first"
                                   " charge with Idempotent-Replayed: true"),
                 **problem_responses(400, 401, 403, 404, 409, 422)})
async def charge_fee(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], data: JSONBody[ChargeFee],
    svc: Services, idempotency_key: RequiredIdempotencyKey,
) -> Response[bytes]:
    return await write(request, svc, f"http:charge:{account_id}", idempotency_key, 201,
                       accounts.charge_fee, account_id, data)


@put("/{account_id:uuid}/prices/{product:str}", summary="Per-account unit price override",
     **OPERATOR_ONLY, responses={**written(PriceOverrideView),  # type: ignore[arg-type]
                                 **problem_responses(400, 401, 403, 404, 409, 422)})
async def set_price(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], product: ProductPath,
    data: JSONBody[PriceOverride], svc: Services, principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> Response[bytes]:
    return await write(request, svc, f"http:price:{account_id}:{product}", idempotency_key, 200,
                       accounts.set_price, account_id, product, data, actor_of(principal))


@post("/v1/charges", summary="Charge many accounts' fees at once", status_code=200,
      description="Each fee as by POST /v1/accounts/{id}/charges, once per charge_key; one"
      " outcome per fee (charged, refused for funds, rejected), in one transaction.",
      **OPERATOR_ONLY,  # type: ignore[arg-type]
      responses={200: ResponseSpec(FeeOutcomes, generate_examples=False,
                                   description="One outcome per fee, in order"),
                 **problem_responses(400, 401, 403)})
async def charge_fees(data: JSONBody[ChargeFees], svc: Services) -> Response[bytes]:
    return Response(await svc.writer.call(accounts.charge_fees, svc.ledger, data),
                    media_type=JSON)


def charges_router(services: LedgerServices) -> Router:
    return Router(
        path="/",
        route_handlers=[charge_fees],
        dependencies={"svc": Provide(lambda: services, sync_to_thread=False)},
        tags=["charges"],
    )


def router(services: LedgerServices) -> Router:
    return Router(
        path="/v1/accounts",
        route_handlers=[open_account, get_account, patch_account, close_account, get_balance,
                        grant_credit, adjust, refund, charge_fee, set_price],
        dependencies={"svc": Provide(lambda: services, sync_to_thread=False)},
        tags=["accounts"],
    )
