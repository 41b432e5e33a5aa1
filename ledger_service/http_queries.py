"""Portal reads (CONTRACTS.md, ledger_service): statement entries, usage, and the operators'
raw event stream. Statement and usage answer from the projections; the audit route reads the
event log itself.

Every projection read carries its freshness in headers, so a caller can tell a lagging
projection from a quiet account:

- ``X-Projection-Position``: notification id of the last event the projection applied;
- ``X-Projection-Updated-At``: when the projection last committed a batch (RFC 3339);
- ``X-Log-Position``: notification id of the newest event in the log. Equal positions mean
  the read reflects every event recorded when it was answered.

With a read replica (DATABASE_READ_URL) these reads answer as of the replica's position
while its lag is within DATABASE_READ_LAG_MAX_S, and from the primary otherwise; the headers
say which: ``X-Read-Source`` (``replica`` or ``primary``) and, from the replica,
``X-Replica-Lag-Ms`` (an upper bound on how far behind the primary it was;
services/read_replica.py). Without a replica neither header is sent.

A portal token reads only its own tenant (another account is 404, not 403), enforced twice:
by the route, and by row-level security on the tables (projections/reads.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, date
from typing import Annotated, Any, Final, Literal, get_args
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from psycopg_pool import AsyncConnectionPool

from contracts.http.ledger import (
    AUDIT_PAGE_MAX,
    ENTRIES_PAGE_MAX,
    USAGE_ITEMS_MAX,
    AuditEvent,
    AuditEventsPage,
    EntriesPage,
    EntryView,
    UsageItem,
    UsageView,
)
from contracts.ledger import EntryKind
from contracts.money import format_micros
from ledger_service.domain.chain import (
    GENESIS_HASH,
    event_payload,
    is_upcast_class,
    stored_payload,
)
from ledger_service.domain.naming import event_name
from ledger_service.http import OPERATOR_ONLY, READERS, LedgerServices, check_may_read
from ledger_service.projections import reads
from ledger_service.projections.decoding import EventDecoder, stored_row
from services.http import Principal, problem_responses
from services.http.auth import CurrentPrincipal
from services.http.parameters import cursor_parameter, instant_parameter, parse_instant
from services.read_replica import REPLICA_ERRORS, ReadRoute, ReadRouting

JSON: Final = "application/json"
CSV: Final = "text/csv"
ENTRIES_PAGE_DEFAULT: Final = 100
AUDIT_PAGE_DEFAULT: Final = 100
# Each CSV download holds a pooled connection for as long as the client reads; a bound keeps
# downloads from starving the service's other requests of connections.
CSV_STREAMS_MAX: Final = 4
ENTRY_KINDS: Final = frozenset(get_args(EntryKind))
_encoder = msgspec.json.Encoder()


class QueryServices:
    """What the read routes need; main.py builds it."""

    def __init__(self, ledger_services: LedgerServices, pool: AsyncConnectionPool,
                 routing: ReadRouting | None = None) -> None:
        self.ledger_services = ledger_services
        self.pool = pool
        self.routing = routing or ReadRouting(pool)
        self.csv_streams = asyncio.Semaphore(CSV_STREAMS_MAX)
        self._decoder: EventDecoder | None = None

    @property
    def decoder(self) -> EventDecoder:
        if self._decoder is None:
            self._decoder = EventDecoder(self.ledger_services.ledger.app.mapper)
        return self._decoder


Queries = NamedDependency[QueryServices]


def tenant_of(principal: Principal, account_id: UUID) -> UUID:
    """The tenant a read is scoped to: the portal token's own, or the account an operator
    asked for."""
    if principal.is_operator or principal.tenant_id is None:
        return account_id
    return UUID(principal.tenant_id)


def _kinds(values: list[str] | None) -> tuple[str, ...]:
    kinds = tuple(k for v in values or () for k in v.split(",") if k)
    unknown = sorted(set(kinds) - ENTRY_KINDS)
    if unknown:
        raise ValidationException(
            detail=f"unknown kind {', '.join(unknown)}; one of {', '.join(sorted(ENTRY_KINDS))}",
            extra=[{"key": "kind", "message": "unknown entry kind", "source": "query"}])
    return kinds


def _not_found(account_id: UUID) -> NotFoundException:
    return NotFoundException(detail=f"account {account_id} not found")


def entry_view(row: reads.EntryRow) -> EntryView:
    return EntryView(
        entry_id=row.entry_id, kind=row.kind,  # type: ignore[arg-type]
        amount=format_micros(row.amount_micros),
        balance_after=format_micros(row.balance_after_micros), description=row.description,
        reference=row.reference, occurred_at=row.occurred_at.astimezone(UTC),
    )


EntriesResponses = {
    200: ResponseSpec(
        EntriesPage, generate_examples=False,
        description="A page of entries, newest first; or, with"
                      " Accept: text/csv, the whole filtered statement as CSV"),
    **problem_responses(400, 401, 403, 404, 429),
}


@get("/{account_id:uuid}/entries", summary="Statement entries, newest first", **READERS,  # type: ignore[arg-type]
     responses=EntriesResponses)
async def get_entries(
    request: Request[Any, Any, Any], account_id: FromPath[UUID], q: Queries,
    principal: CurrentPrincipal,
    kind: Annotated[list[str] | None, QueryParameter(
        description="Only these kinds (repeat, or comma-separate)")] = None,
    occurred_from: Annotated[str | None, instant_parameter(
        "Entries at or after this instant", name="from")] = None,
    occurred_to: Annotated[str | None, instant_parameter(
        "Entries before this instant", name="to")] = None,
    limit: Annotated[int, QueryParameter(
        ge=1, le=ENTRIES_PAGE_MAX, description="Entries per page")] = ENTRIES_PAGE_DEFAULT,
    cursor: Annotated[str | None, cursor_parameter(512)] = None,
) -> Response[Any]:
    check_may_read(principal, account_id)
    where = reads.EntryFilter(_kinds(kind), parse_instant(occurred_from, "from"),
                              parse_instant(occurred_to, "to"))
    tenant = tenant_of(principal, account_id)
    if request.accept.best_match([JSON, CSV], default=JSON) == CSV:
        return await _entries_csv(q, account_id, tenant, where)
    try:
        found, route = await q.routing.run(lambda route: reads.entries_page(
            route.pool, account_id, tenant, where, cursor, limit))
    except reads.BadCursor as exc:
        raise ValidationException(detail=str(exc), extra=[
            {"key": "cursor", "message": str(exc), "source": "query"}]) from None
    if found.currency is None:
        raise _not_found(account_id)
    page = EntriesPage(items=[entry_view(r) for r in found.entries],
                       next_cursor=found.next_cursor)
    return Response(_encoder.encode(page), media_type=JSON,
                    headers={**found.freshness.headers(), **route.headers()})


async def _entries_csv(q: QueryServices, account_id: UUID, tenant: UUID,
                       where: reads.EntryFilter) -> Response[Any]:
    if q.csv_streams.locked():
        raise TooManyDownloads()
    route = await q.routing.route()
    body = _csv_body(q, route, account_id, tenant, where)
    try:
        read = await anext(body)
    except REPLICA_ERRORS as exc:
        if not route.replica:
            raise
        # The replica failed before the first byte: the whole download from the primary.
        # (A failure later, mid-stream, ends the download: the headers are gone.)
        q.routing.replica_failed(exc)
        route = q.routing.primary_route()
        body = _csv_body(q, route, account_id, tenant, where)
        read = await anext(body)
    if not isinstance(read, reads.TenantRead) or read.currency is None:
        await body.aclose()
        raise _not_found(account_id)
    headers = {**read.freshness.headers(), **route.headers(),
               "Content-Disposition": f'attachment; filename="statement-{account_id}.csv"'}
    return Stream(body, media_type=CSV, headers=headers)  # Litestar adds charset=utf-8


async def _csv_body(q: QueryServices, route: ReadRoute, account_id: UUID, tenant: UUID,
                    where: reads.EntryFilter) -> AsyncGenerator[Any, None]:
    """First the read's freshness (for the headers), then the CSV, in one transaction."""
    async with q.csv_streams, reads.tenant_read(route.pool, "statement", account_id,
                                                 tenant) as read:
        yield read
        async for chunk in reads.statement_csv(read, account_id, where):
            yield chunk


class TooManyDownloads(Exception):
    """Every CSV stream is in use; the caller should retry shortly."""


@get("/{account_id:uuid}/usage", summary="Billed usage by day or month and product",
     **READERS,  # type: ignore[arg-type]
     responses={200: ResponseSpec(UsageView, generate_examples=False),
                **problem_responses(400, 401, 403, 404)},
     media_type=JSON)
async def get_usage(
    account_id: FromPath[UUID], q: Queries, principal: CurrentPrincipal,
    group_by: Annotated[Literal["day", "month"], QueryParameter(
        description="One item per UTC day, or per calendar month, and product")] = "day",
    day_from: Annotated[date | None, QueryParameter(
        name="from", description="First UTC day included (YYYY-MM-DD)")] = None,
    day_to: Annotated[date | None, QueryParameter(
        name="to", description="First UTC day not included (YYYY-MM-DD)")] = None,
) -> Response[Any]:
    check_may_read(principal, account_id)
    tenant = tenant_of(principal, account_id)
    (answer, rows), route = await q.routing.run(lambda route: reads.usage(
        route.pool, account_id, tenant, group_by, day_from, day_to, USAGE_ITEMS_MAX + 1))
    if answer.currency is None:
        raise _not_found(account_id)
    if len(rows) > USAGE_ITEMS_MAX:
        raise ValidationException(
            detail=f"more than {USAGE_ITEMS_MAX} items: narrow from/to or group by month",
            extra=[{"key": "from", "message": "range too large", "source": "query"}])
    view = UsageView(
        currency=answer.currency, group_by=group_by,  # type: ignore[arg-type]
        items=[UsageItem(period=r.period, product=r.product, quantity=r.quantity,
                         amount=format_micros(r.amount_micros)) for r in rows])
    return Response(_encoder.encode(view), media_type=JSON,
                    headers={**answer.freshness.headers(), **route.headers()})


@get("/accounts/{account_id:uuid}/events", summary="The account's raw events with hashes",
     **OPERATOR_ONLY,  # type: ignore[arg-type]
     responses={200: ResponseSpec(AuditEventsPage, generate_examples=False),
                **problem_responses(400, 401, 403, 404)},
     media_type=JSON)
async def get_audit_events(
    account_id: FromPath[UUID], q: Queries,
    cursor: Annotated[str | None, cursor_parameter(32)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=AUDIT_PAGE_MAX)] = AUDIT_PAGE_DEFAULT,
) -> Response[Any]:
    """Oldest first. `hash` is the event's chain hash: sha256 of the previous hash, the event
    type, the position, the recorded time and the canonical JSON of `data` (ledgerctl verify
    recomputes it)."""
    after = _audit_cursor(cursor)
    # The event before the page too: its hash is the first item's previous_hash.
    rows, route = await q.routing.run(lambda route: reads.account_event_rows(
        route.pool, account_id, max(after, 1), limit + 2))
    stored = [stored_row(r) for r in rows]
    decoded = [q.decoder.decode(row) for row in stored]
    if not decoded and after == 0:
        raise _not_found(account_id)
    previous: str | None = None
    if decoded and after > 0 and decoded[0].originator_version == after:
        previous = getattr(decoded.pop(0), "chain_hash", None)
        stored.pop(0)
    page = decoded[:limit]
    items = []
    for event, row in zip(page, stored, strict=False):
        chain_hash = getattr(event, "chain_hash", GENESIS_HASH)
        # `data` is what the hash covers: an upcast event's payload as it was stored
        data = stored_payload(row.state) if is_upcast_class(type(event)) \
            else event_payload(event)
        items.append(AuditEvent(
            position=event.originator_version, topic=event_name(type(event)),
            recorded_at=event.timestamp, data=data, hash=chain_hash,
            previous_hash=previous))
        previous = chain_hash
    next_cursor = str(page[-1].originator_version) if len(decoded) > limit else None
    body = AuditEventsPage(items=items, next_cursor=next_cursor)
    return Response(_encoder.encode(body), media_type=JSON, headers=route.headers())


def _audit_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise ValidationException(detail="cursor is not one this API returned", extra=[
            {"key": "cursor", "message": "invalid cursor", "source": "query"}])
    return int(cursor)


EXCEPTION_STATUSES: dict[type[Exception], tuple[int, str]] = {
    TooManyDownloads: (429, "too-many-downloads"),
}


def routers(services: QueryServices) -> list[Router]:
    provide = {"q": Provide(lambda: services, sync_to_thread=False)}
    return [
        Router(path="/v1/accounts", route_handlers=[get_entries, get_usage],
               dependencies=provide, tags=["statements"]),
        Router(path="/v1/audit", route_handlers=[get_audit_events], dependencies=provide,
               tags=["audit"]),
    ]
