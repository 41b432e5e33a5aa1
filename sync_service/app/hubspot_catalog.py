"""The HubSpot product catalogue, pulled on a schedule and on demand, published as
`catalog.v1.prices_updated` only when it changed.

Each pull reads every product (100 a page, paced within HubSpot's 100 calls per 10 seconds,
429 honoured), validates the rows (`domain.catalogue`), and compares the list's content
hash with the last one published; a change is written to the outbox with a new version in the
same transaction that records it, so a crash never publishes twice or loses a change.
Without a token HubSpot is "not connected": nothing is pulled and nothing is made up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from psycopg_pool import AsyncConnectionPool

from contracts.catalog import PricesUpdated
from contracts.subjects import CATALOG_PRICES_UPDATED
from services.outbox import enqueue
from sync_service.app.hubspot_api import HubSpotClient
from sync_service.domain.catalogue import PropertyNames, read_catalogue, version_of
from sync_service.domain.errors import ProviderError, ProviderRejected, ProviderUnauthorized

log = structlog.get_logger(__name__)

PRODUCTS_PATH: Final = "/crm/v3/objects/products"
PAGE_SIZE: Final = 100
PAGES_MAX: Final = 200  # 20,000 products: far beyond a real catalogue, a bound on a loop
_ERROR_CHARS_MAX: Final = 500


@dataclass(frozen=True, slots=True)
class PullResult:
    version: str | None
    changed: bool
    products: int
    rejected: list[str]


class HubSpotCatalogue:
    def __init__(self, pool: AsyncConnectionPool, hubspot: HubSpotClient, *,
                 names: PropertyNames, interval_s: float, outbox_channel: str,
                 on_publish: Any = None,
                 scheduled_here: Callable[[], bool] = lambda: True) -> None:
        self._pool = pool
        self._hubspot = hubspot
        self._names = names
        self._interval_s = interval_s
        self._channel = outbox_channel
        self._on_publish = on_publish
        # With several sync processes, only the one owning HubSpot's lease pulls on schedule.
        self._scheduled_here = scheduled_here
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="hubspot-catalogue")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if self._scheduled_here():
                with contextlib.suppress(ProviderError, OSError):
                    await self.pull()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval_s)

    async def pull(self) -> PullResult:
        """Read, validate, and publish if changed; one pull at a time per process."""
        async with self._lock:
            try:
                rows = await self._read_products()
            except ProviderError as exc:
                await self._record(error=str(exc)[:_ERROR_CHARS_MAX], rejected=0,
                                   refused=isinstance(exc, ProviderUnauthorized))
                log.warning("hubspot.catalogue_pull_failed", error=str(exc))
                raise
            catalogue = read_catalogue(rows, self._names)
            for reason in catalogue.rejected[:20]:
                log.warning("hubspot.product_rejected", reason=reason)
            if not catalogue.products:
                await self._record(error="no valid product in the HubSpot catalogue",
                                   rejected=len(catalogue.rejected))
                return PullResult(None, False, 0, catalogue.rejected)
            return await self._publish_if_changed(catalogue.content_hash, catalogue.products,
                                                  catalogue.rejected)

    async def _publish_if_changed(self, content_hash: str, products: list[Any],
                                  rejected: list[str]) -> PullResult:
        now = datetime.now(UTC)
        async with self._pool.connection() as conn, conn.transaction():
            # One publisher at a time across processes: the advisory lock of this transaction.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sync:hubspot-catalogue'))")
            last = await (await conn.execute(
                "SELECT version, content_hash FROM catalog_versions"
                " ORDER BY published_at DESC, version DESC LIMIT 1")).fetchone()
            changed = last is None or last[1] != content_hash
            version = version_of(content_hash, now) if changed else str(last[0])  # type: ignore[index]
            if changed:
                message = PricesUpdated(version=version, products=products, source="hubspot",
                                        published_at=now)
                await conn.execute(
                    "INSERT INTO catalog_versions (version, content_hash, products, published_at)"
                    " VALUES (%s, %s, %s, %s)", (version, content_hash, len(products), now))
                await enqueue(conn, CATALOG_PRICES_UPDATED, message, channel=self._channel)
            await self._record_in(conn, error=None, rejected=len(rejected))
        if changed:
            log.info("hubspot.catalogue_published", version=version, products=len(products))
            if self._on_publish is not None:
                self._on_publish()
        return PullResult(version, changed, len(products), rejected)

    async def _read_products(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(PAGES_MAX):
            params = {"limit": str(PAGE_SIZE), "properties": ",".join(self._names.wanted()),
                      "archived": "false"}
            if after:
                params["after"] = after
            body = await self._hubspot.get(PRODUCTS_PATH, params)
            rows.extend(r for r in body.get("results") or [] if isinstance(r, dict))
            after = (((body.get("paging") or {}).get("next")) or {}).get("after")
            if not after:
                return rows
        raise ProviderRejected(f"more than {PAGES_MAX} pages of products")

    async def _record(self, *, error: str | None, rejected: int, refused: bool = False) -> None:
        async with self._pool.connection() as conn:
            await self._record_in(conn, error=error, rejected=rejected, refused=refused)

    @staticmethod
    async def _record_in(conn: Any, *, error: str | None, rejected: int,
                         refused: bool = False) -> None:
        await conn.execute(
            "INSERT INTO target_health (target, last_attempt_at, last_success_at, last_error,"
            " rejected_rows, credentials_refused) VALUES ('hubspot', now(),"
            " CASE WHEN %s::text IS NULL THEN now() END, %s, %s, %s) ON CONFLICT (target)"
            " DO UPDATE SET last_attempt_at = now(), last_success_at ="
            " coalesce(EXCLUDED.last_success_at, target_health.last_success_at),"
            " last_error = EXCLUDED.last_error, rejected_rows = EXCLUDED.rejected_rows,"
            " credentials_refused = EXCLUDED.credentials_refused",
            (error, error, rejected, refused))
