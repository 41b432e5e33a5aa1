"""How synchronisation is doing: per target and per connection, read from the queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from psycopg_pool import AsyncConnectionPool

from contracts.http.sync import (
    DEAD_LETTERS_PAGE_MAX,
    ConnectionStatus,
    DeadLetterView,
    SyncStatus,
    TargetStatus,
)

_COUNTS: Final = """
SELECT c.connection_id, c.name, c.status, c.is_default, c.last_success_at, c.last_error,
       coalesce(g.status = 'active', false) AND c.status = 'active' AS connected,
       count(j.job_id) FILTER (WHERE j.status IN ('pending', 'running')) AS backlog,
       count(j.job_id) FILTER (WHERE j.status IN ('pending', 'running') AND j.failures > 0),
       count(j.job_id) FILTER (WHERE j.status = 'dead'), l.owner
  FROM connections c
  LEFT JOIN xero_grants g ON g.grant_id = c.grant_id
  LEFT JOIN sync_jobs j ON j.connection_id = c.connection_id
  LEFT JOIN connection_leases l ON l.connection_id = c.connection_id AND l.expires_at > now()
 WHERE c.target = 'xero'
 GROUP BY c.connection_id, g.status, l.owner
 ORDER BY c.name, c.connection_id
"""


class SyncStatusReader:
    def __init__(self, pool: AsyncConnectionPool, *, xero_configured: bool,
                 hubspot_configured: bool = False) -> None:
        self._pool = pool
        self._xero_configured = xero_configured
        self._hubspot_configured = hubspot_configured

    async def status(self) -> SyncStatus:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_COUNTS)).fetchall()
            unassigned_row = await (await conn.execute(
                "SELECT count(*) FROM sync_jobs WHERE connection_id IS NULL"
                " AND status IN ('pending', 'running')")).fetchone()
            hubspot_row = await (await conn.execute(
                "SELECT last_success_at, last_error, credentials_refused FROM target_health"
                " WHERE target = 'hubspot'")).fetchone()
            pushes = await (await conn.execute(
                "SELECT c.last_success_at, c.last_error,"
                " count(j.job_id) FILTER (WHERE j.status IN ('pending', 'running')),"
                " count(j.job_id) FILTER (WHERE j.status IN ('pending', 'running')"
                " AND j.failures > 0), count(j.job_id) FILTER (WHERE j.status = 'dead')"
                " FROM connections c LEFT JOIN sync_jobs j ON j.connection_id = c.connection_id"
                " WHERE c.connection_id = 'hubspot' GROUP BY c.connection_id")).fetchone()
        unassigned = int(unassigned_row[0]) if unassigned_row else 0
        connections = [
            ConnectionStatus(connection_id=r[0], name=r[1], state=r[2], is_default=r[3],
                             last_success_at=r[4], last_error=r[5], connected=bool(r[6]),
                             backlog=r[7], failures=r[8], dead_letters=r[9], owner=r[10])
            for r in rows
        ]
        successes = [c.last_success_at for c in connections if c.last_success_at]
        errors = [c.last_error for c in connections if c.last_error]
        xero = TargetStatus(
            target="xero",
            connected=self._xero_configured and any(c.connected for c in connections),
            last_success_at=max(successes) if successes else None,
            backlog=sum(c.backlog for c in connections) + unassigned,
            failures=sum(c.failures for c in connections),
            dead_letters=sum(c.dead_letters for c in connections),
            last_error=errors[0] if errors else None,
            connections=connections,
            unassigned=unassigned,
        )
        # HubSpot: the catalogue pull and the invoice pushes; without a token, honestly
        # "not connected".
        successes_hs = [t for t in (hubspot_row[0] if hubspot_row else None,
                                    pushes[0] if pushes else None) if t is not None]
        hubspot = TargetStatus(
            target="hubspot",
            connected=self._hubspot_configured and bool(successes_hs)
            and not (hubspot_row is not None and hubspot_row[2]),
            last_success_at=max(successes_hs) if successes_hs else None,
            backlog=pushes[2] if pushes else 0,
            failures=(pushes[3] if pushes else 0)
            + (0 if hubspot_row is None or hubspot_row[1] is None else 1),
            dead_letters=pushes[4] if pushes else 0,
            last_error=(hubspot_row[1] if hubspot_row and hubspot_row[1] else None)
            or (pushes[1] if pushes else None))
        return SyncStatus(targets=[xero, hubspot], as_of=datetime.now(UTC))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetterView]:
        limit = max(1, min(limit, DEAD_LETTERS_PAGE_MAX))
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT job_id, connection_id, kind, subject_id, attempts, failures, last_error,"
                " updated_at FROM sync_jobs WHERE status = 'dead' ORDER BY job_id LIMIT %s",
                (limit,))).fetchall()
        return [DeadLetterView(dead_letter_id=r[0],
                               target="hubspot" if r[1] == "hubspot" else "xero",
                               connection_id=r[1],
                               kind=r[2], subject_id=r[3], attempts=r[4], failures=r[5],
                               last_error=r[6], updated_at=r[7]) for r in rows]
