"""How far the ledger's followers (the projections and the publisher) are behind the log.

The followers run in a process of their own (followers.py), and under HTTP_REUSE_PORT several
service processes answer one port, so no process can keep these figures in memory and be
right. They are read from the database instead, at the moment they are asked for (a scrape of
`/metrics`, `GET /v1/health/lag`, `ledgerctl status`): each follower's committed position, the
head of the log, and the time of the oldest event still waiting for that follower. Three
index look-ups per follower, true whichever process answers.

Lag in seconds is the age of the oldest event a follower has not yet applied (0 when it is at
the head). A follower that keeps up has only events younger than one batch waiting; a stuck
one has the same oldest event waiting, older by the second, so the figure grows without bound
exactly when events wait and the follower does not move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg_pool import AsyncConnectionPool

from ledger_service.domain.times import format_time
from ledger_service.projections.builders import PROJECTION_NAMES
from ledger_service.publisher import PUBLISHER_NAME

# A follower this far behind (its oldest waiting event this old) is reported as stuck by
# GET /v1/health/lag and `ledgerctl verify`; LEDGER_LAG_ALERT_S changes it.
LAG_ALERT_S_DEFAULT: Final = 60.0

FollowerKind = Literal["projection", "publisher"]

# The oldest waiting event's time is read from its stored state (the event store has no time
# column); the timestamp is the one typed value the transcoder writes ({"_type_", "_data_"}).
# A pattern, not PostgreSQL's JSON operators: those refuse a whole document holding an
# escaped NUL (\u0000) anywhere, and a payload's free text may hold one.
TIMESTAMP_PATTERN: Final = r'"timestamp":\{"_type_":"datetime_iso","_data_":"([^"]+)"'
LAG_SQL: Final = """
WITH head AS (SELECT coalesce(max(notification_id), 0) AS position FROM ledger_events),
followers AS (
    SELECT 'projection' AS kind, name, position, updated_at FROM projection_positions
    UNION ALL
    SELECT 'publisher', %(publisher)s, coalesce(
        (SELECT notification_id FROM publisher_position WHERE name = %(publisher)s), 0),
        NULL::timestamptz
)
SELECT f.kind, f.name, f.position, head.position,
       coalesce(extract(epoch FROM clock_timestamp() - (
           SELECT substring(convert_from(e.state, 'UTF8') FROM %(stamp)s)::timestamptz
           FROM ledger_events AS e WHERE e.notification_id > f.position
           ORDER BY e.notification_id LIMIT 1)), 0)::float8,
       f.updated_at
FROM followers AS f, head
ORDER BY f.kind, f.name
"""


PARAMS: Final = {"publisher": PUBLISHER_NAME, "stamp": TIMESTAMP_PATTERN}
# Events set aside by a projection and not yet cleared by a rebuild (runner.quarantine). The
# runner's counter of them lives in the follower process, which no scrape reaches unless
# PROMETHEUS_MULTIPROC_DIR is set: read from the table, this is right either way.
QUARANTINED_SQL: Final = ("SELECT projection, count(*) FROM projection_quarantine"
                          " WHERE projection = ANY(%s) GROUP BY projection")


@dataclass(frozen=True, slots=True)
class FollowerLag:
    kind: FollowerKind
    name: str
    position: int  # the last notification the follower applied or published
    head: int  # the newest notification in the log
    lag_s: float  # the age of the oldest event still waiting for it; 0 at the head
    updated_at: datetime | None = None  # when a projection last committed a batch

    @property
    def behind_events(self) -> int:
        # notification ids may have gaps (a rolled-back insert), so this is an upper bound
        return max(self.head - self.position, 0)

    def stuck(self, alert_s: float) -> bool:
        return self.behind_events > 0 and self.lag_s > alert_s

    def as_json(self, alert_s: float) -> dict[str, Any]:
        """The one JSON shape of a follower's lag: `GET /v1/health/lag`, `ledgerctl status
        --json` and `ledgerctl verify --json` all answer it."""
        return {"kind": self.kind, "name": self.name, "position": self.position,
                "head": self.head, "behind_events": self.behind_events,
                "lag_s": round(self.lag_s, 3), "stuck": self.stuck(alert_s),
                "updated_at": format_time(self.updated_at) if self.updated_at else None}


def _lags(rows: Sequence[tuple[Any, ...]]) -> list[FollowerLag]:
    return [FollowerLag(kind, name, int(position), int(head), max(float(lag_s), 0.0), updated_at)
            for kind, name, position, head, lag_s, updated_at in rows]


def read_lags(conn: psycopg.Connection[Any]) -> list[FollowerLag]:
    """For tools (ledgerctl): a connection whose search path has the ledger schema."""
    return _lags(conn.execute(LAG_SQL, PARAMS).fetchall())


async def read_lags_async(pool: AsyncConnectionPool) -> list[FollowerLag]:
    """For the service: its pool's connections have the ledger schema on the search path."""
    async with pool.connection() as conn:
        cursor = await conn.execute(LAG_SQL, PARAMS)
        return _lags(await cursor.fetchall())


async def follower_metrics(pool: AsyncConnectionPool) -> list[Metric]:
    """/metrics' figures of the followers, read from the database at scrape time."""
    async with pool.connection() as conn:
        lags = _lags(await (await conn.execute(LAG_SQL, PARAMS)).fetchall())
        cursor = await conn.execute(QUARANTINED_SQL, [list(PROJECTION_NAMES)])
        quarantined = {str(name): int(count) for name, count in await cursor.fetchall()}
    family = GaugeMetricFamily(
        "ledger_projection_quarantined_events",
        "Events a projection could not apply and set aside, until a rebuild clears them.",
        labels=["projection"])
    for name in PROJECTION_NAMES:
        family.add_metric([name], quarantined.get(name, 0))
    return [*lag_metrics(lags), family]


def lag_metrics(lags: Sequence[FollowerLag]) -> list[Metric]:
    events = GaugeMetricFamily(
        "ledger_follower_lag_events",
        "Notifications in the log the follower has not applied yet (head minus position).",
        labels=["kind", "follower"])
    seconds = GaugeMetricFamily(
        "ledger_follower_lag_seconds",
        "Age of the oldest event the follower has not applied yet; 0 at the head.",
        labels=["kind", "follower"])
    position = GaugeMetricFamily(
        "ledger_follower_position", "The last notification the follower applied.",
        labels=["kind", "follower"])
    head = GaugeMetricFamily("ledger_log_head_position", "The newest notification in the log.")
    for lag in lags:
        labels = [lag.kind, lag.name]
        events.add_metric(labels, lag.behind_events)
        seconds.add_metric(labels, lag.lag_s)
        position.add_metric(labels, lag.position)
    head.add_metric([], max((lag.head for lag in lags), default=0))
    return [events, seconds, position, head]
