"""Catch-up and rebuild: the event log into the projections, in batches, exactly once.

One batch is one transaction: take the projections' lock, read each projection's position,
read the next notifications after the lowest, apply each event to every projection that has
not yet applied it, write the rows, and move the positions to the last notification read.
Rows and positions commit together or not at all, so a crash anywhere leaves every projection
exactly at its last committed batch, and the next batch starts from there.

Why not eventsourcing's ProjectionRunner: it commits once per event (about 1,800 events/s
measured here); batching a few hundred notifications per transaction is 30-60x faster and just
as exactly-once, because the position still commits with the rows. Far behind the head the
batches grow to thousands of notifications (BatchSizer), which merges more of an account's
events into each balance and usage row; at the head they are a few hundred again, so a live
batch holds the lock for milliseconds.

Two service processes may run a runner each: the advisory lock makes their batches take turns,
and each batch re-reads the positions, so an event is never applied twice. A rebuild fills
shadow tables without the lock, then takes it for the last stretch and the swap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple
from uuid import UUID

import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError, Application
from prometheus_client import Counter
from psycopg.sql import SQL, Identifier

from ledger_service.domain.account import BillingAccount
from ledger_service.projections.builders import (
    PROJECTION_NAMES,
    LoadAccount,
    Projection,
    ProjectionError,
    make_projection,
)
from ledger_service.projections.decoding import ROW_COLUMNS, EventDecoder, stored_row
from ledger_service.projections.eventlog import log_head
from ledger_service.projections.tables import (
    SHADOW_SUFFIX,
    build_indexes,
    create_shadow,
    defer_indexes,
    drop_shadow,
    swap_in_shadow,
)
from services.backoff import Backoff
from services.database import conninfo

log = structlog.get_logger(__name__)

# "Every few hundred notifications": big enough to amortise the commit and the per-statement
# round trips, small enough that a batch holds the lock for milliseconds, not seconds.
BATCH_NOTIFICATIONS_MAX: Final = 500
# Far behind the head, batches grow: a bigger batch writes each account's balance and each
# day's usage once for more of its events (1,000 accounts: one balance row per event at 500
# notifications, one per ten at 10,000), and holds the lock for a few hundred milliseconds,
# which only a backlog earns. A batch that comes back full makes the next one BATCH_GROWTH
# times bigger; one that comes back short (the head is near) makes it live-sized again.
CATCH_UP_BATCH_NOTIFICATIONS_MAX: Final = 10_000
BATCH_GROWTH: Final = 4
# A rebuild writes shadow tables nobody reads, so it takes big bites from the start.
REBUILD_BATCH_NOTIFICATIONS_MAX: Final = 10_000
# A batch's stored events are all in memory at once, and one usage event may hold 5,000
# lines (megabytes): past this many bytes of state, the next batch is cut to fit.
BATCH_STATE_BYTES_MAX: Final = 64 * 1024 * 1024
IDLE_WAIT_S: Final = 0.05
# Near the head (a batch that came back short), wait this long before the next one, so that a
# batch gathers some milliseconds of events rather than one commit's worth: at 1,000
# authorizations/s, batch after batch of two or three events cost the follower a third of a
# core (bench/authorize.py), taken from the writer. Reads never depend on it: a balance falls
# back to the account itself when its row is behind (projections/reads.py).
LINGER_S: Final = 0.1
FAILURE_WAIT_S: Final = 1.0
FAILURE_WAIT_S_MAX: Final = 30.0
LOCK_NAME: Final = "ledger.projections"
# Failures that applying the same event again would repeat, whoever retries and whenever: the
# event's data, not the moment (PostgreSQL's class 22, e.g. CharacterNotInRepertoire for a
# NUL in text, UntranslatableCharacter for one in jsonb; psycopg's own refusal of a NUL; a str
# that does not encode). Only these quarantine an event; anything else (a lost connection, a
# bug) stops the projections where they are and is retried, as before.
DETERMINISTIC_ERRORS: Final[tuple[type[BaseException], ...]] = (
    psycopg.DataError, UnicodeEncodeError)
QUARANTINE_ERROR_CHARS_MAX: Final = 2_000

QUARANTINED = Counter(
    "ledger_projection_events_quarantined_total",
    "Events a projection could not apply (a data error) and set aside, by projection.",
    ["projection"],
)

Connect = Callable[[], psycopg.Connection[Any]]


class RebuildInProgress(RuntimeError):
    """Another rebuild of the same projection holds its lock."""


@dataclass(slots=True)
class Target:
    """A projection, the position row it advances, and the tables it writes."""

    projection: Projection
    position_name: str
    tables: Mapping[str, str]

    @classmethod
    def live(cls, projection: Projection) -> Target:
        return cls(projection, projection.name, {t: t for t in projection.tables})


@dataclass(frozen=True, slots=True)
class BatchResult:
    notifications: int  # read from the log (0: nothing new)
    events: int  # account events applied to at least one projection
    position: int  # the targets' position after the batch
    state_bytes: int = 0  # of the notifications read


@dataclass(slots=True)
class BatchSizer:
    """Notifications per batch: ``smallest`` at the head, growing to ``largest`` while batches
    come back full, and never more than BATCH_STATE_BYTES_MAX of state at the last batch's
    average."""

    smallest: int
    largest: int
    limit: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.smallest <= self.largest:
            raise ValueError(f"batch sizes must be 1 <= {self.smallest} <= {self.largest}")
        self.limit = self.smallest

    def after(self, result: BatchResult) -> None:
        if result.notifications < self.limit:
            wanted = self.smallest
        else:
            wanted = min(self.limit * BATCH_GROWTH, self.largest)
        if result.state_bytes > 0:
            fitting = BATCH_STATE_BYTES_MAX * result.notifications // result.state_bytes
            wanted = min(wanted, max(fitting, 1))
        self.limit = wanted


def connector(database_url: str, schema: str = "ledger") -> Connect:
    """Connections for projection work: autocommit, so each `transaction()` is one."""
    info = conninfo(database_url, options=f"-c search_path={schema},public -c synchronous_commit=off")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(info, autocommit=True)

    return connect


def account_loader(app: Application[UUID]) -> LoadAccount:
    """Accounts at a version, from the event store (latest snapshot + events)."""

    def load(account_id: UUID, version: int) -> BillingAccount | None:
        if version < 1:
            return None
        try:
            account: Any = app.repository.get(account_id, version=version)
        except AggregateNotFoundError:
            return None
        return account if isinstance(account, BillingAccount) else None

    return load


def apply_batch(conn: psycopg.Connection[Any], decoder: EventDecoder,
                targets: Sequence[Target], *, limit: int = BATCH_NOTIFICATIONS_MAX,
                lock: bool = True, isolate: bool = False) -> BatchResult:
    """One transaction: the next ``limit`` notifications into every target.

    ``isolate``: each event is written to each target on its own (a savepoint each), and an
    event a target cannot write for a deterministic reason is quarantined for that target
    instead of failing the batch. Slow (a flush per event), so only for the batch after one
    that failed that way.
    """
    names = [t.position_name for t in targets]
    # binary: bytea arrives as bytes, not hex text to decode
    with conn.transaction(), conn.cursor(binary=True) as cur:
        if lock:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK_NAME,))
        positions: dict[str, int] = dict(cur.execute(
            "SELECT name, position FROM projection_positions WHERE name = ANY(%s)",
            (names,)).fetchall())
        if len(positions) != len(names):
            raise ProjectionError(f"no position row for {set(names) - set(positions)}")
        start = min(positions.values())
        raw = cur.execute(
            f"SELECT {ROW_COLUMNS} FROM ledger_events WHERE notification_id > %s"  # noqa: S608
            " ORDER BY notification_id LIMIT %s", (start, limit)).fetchall()
        if not raw:
            return BatchResult(0, 0, start)
        streamer = next((t for t in targets if t.projection.streams and not isolate), None)
        if isolate:
            events = _apply_rows_isolated(conn, cur, decoder, targets, positions, raw)
        else:
            with (streamer.projection.streaming(cur, streamer.tables) if streamer is not None
                  else contextlib.nullcontext()):
                events = _apply_rows(decoder, targets, positions, raw)
        last = int(raw[-1][0])
        for target in targets:
            target.projection.flush(cur, target.tables)
        cur.execute("UPDATE projection_positions SET position = %s, updated_at = now()"
                    " WHERE name = ANY(%s) AND position < %s", (last, names, last))
    return BatchResult(len(raw), events, last, sum(len(values[4]) for values in raw))


def _apply_rows(decoder: EventDecoder, targets: Sequence[Target], positions: Mapping[str, int],
                raw: list[tuple[Any, ...]]) -> int:
    """Each account event to every target not yet past it; returns the events applied."""
    events = 0
    all_behind = max(positions[t.position_name] for t in targets)  # past it, all want it
    for values in raw:
        row = stored_row(values)
        if not row.is_account_event:
            continue  # the price catalogue shares the log; no projection reads it
        wanting = targets if row.position > all_behind else [
            t for t in targets if row.position > positions[t.position_name]]
        if not wanting:
            continue
        event = decoder.decode(row)
        events += 1
        for target in wanting:
            target.projection.apply(event, row.position)
    return events


def _apply_rows_isolated(conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any],
                         decoder: EventDecoder, targets: Sequence[Target],
                         positions: Mapping[str, int], raw: list[tuple[Any, ...]]) -> int:
    """`_apply_rows`, but each event into each target in a savepoint of its own, written at
    once; a deterministic failure quarantines that event for that target and moves on."""
    events = 0
    for values in raw:
        row = stored_row(values)
        if not row.is_account_event:
            continue
        wanting = [t for t in targets if row.position > positions[t.position_name]]
        if not wanting:
            continue
        event = decoder.decode(row)
        events += 1
        for target in wanting:
            try:
                with conn.transaction():
                    target.projection.apply(event, row.position)
                    target.projection.flush(cur, target.tables)
            except DETERMINISTIC_ERRORS as exc:
                # The savepoint is gone; so must be what the projection collected or cached
                # from this event (the balances' accounts are read again from the store).
                target.projection.reset()
                quarantine(cur, target.position_name, row.position, event, exc)
    return events


def quarantine(cur: psycopg.Cursor[Any], name: str, position: int, event: Any,
               exc: BaseException) -> None:
    """Record that projection ``name`` set aside the event at ``position``; log and count."""
    error = f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")[:QUARANTINE_ERROR_CHARS_MAX]
    account_id = getattr(event, "originator_id", None)
    event_type = type(event).__qualname__
    cur.execute(
        "INSERT INTO projection_quarantine (projection, position, account_id, event_type, error)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (projection, position) DO UPDATE"
        " SET error = EXCLUDED.error, quarantined_at = now()",
        (name, position, account_id, event_type, error))
    QUARANTINED.labels(projection=name.removesuffix(SHADOW_SUFFIX)).inc()
    log.error("projection.event_quarantined", projection=name, position=position,
              account_id=str(account_id), event_type=event_type, error=error)


def is_deterministic(exc: BaseException) -> bool:
    return isinstance(exc, DETERMINISTIC_ERRORS)


class Quarantined(NamedTuple):
    projection: str
    position: int
    account_id: UUID | None
    event_type: str
    error: str
    quarantined_at: datetime


def quarantined_events(conn: psycopg.Connection[Any], account_id: UUID | None = None,
                       limit: int | None = None) -> list[Quarantined]:
    """The events the projections set aside (`quarantine`), oldest first, for `ledgerctl
    status` and `verify`; a rebuild's (in its shadow tables) left out until it swaps in."""
    query = ("SELECT projection, position, account_id, event_type, error, quarantined_at"
             " FROM projection_quarantine WHERE projection = ANY(%s)")
    params: list[Any] = [list(PROJECTION_NAMES)]
    if account_id is not None:
        query += " AND account_id = %s"
        params.append(account_id)
    query += " ORDER BY position, projection"
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    return [Quarantined(*row) for row in conn.execute(query, params).fetchall()]


Progress = Callable[[int, int, int], None]  # position, head, events applied so far


class ProjectionRunner:
    """Keeps the projections caught up with the log, on a thread of its own."""

    def __init__(self, connect: Connect, decoder: EventDecoder, load_account: LoadAccount, *,
                 names: Sequence[str] = PROJECTION_NAMES,
                 batch_size: int = BATCH_NOTIFICATIONS_MAX,
                 batch_size_max: int = CATCH_UP_BATCH_NOTIFICATIONS_MAX,
                 idle_wait_s: float = IDLE_WAIT_S, linger_s: float = LINGER_S) -> None:
        self.connect = connect
        self.decoder = decoder
        self.targets = [Target.live(make_projection(n, load_account)) for n in names]
        self.sizer = BatchSizer(batch_size, max(batch_size, batch_size_max))
        self.idle_wait_s = idle_wait_s
        self.linger_s = linger_s
        self._conn: psycopg.Connection[Any] | None = None
        # After a batch failed on the data, the next one isolates events (apply_batch).
        self._isolate_next = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_service(cls, database_url: str, schema: str,
                    app: Application[UUID]) -> ProjectionRunner:
        """The runner a ledger process starts: its own connection, the app's mapper, and the
        app's store (snapshots) for accounts it has not cached."""
        return cls(connector(database_url, schema), EventDecoder(app.mapper), account_loader(app))

    # -------------------------------------------------------------- one step

    def step(self) -> BatchResult:
        """Apply one batch; on failure forget everything in memory and re-raise.

        A batch that failed on the data (DETERMINISTIC_ERRORS) is followed by one that writes
        event by event and quarantines the event at fault, so one unstorable event never
        stops the projections for every account.
        """
        isolate, self._isolate_next = self._isolate_next, False
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.connect()
            result = apply_batch(self._conn, self.decoder, self.targets,
                                 limit=self.sizer.limit, isolate=isolate)
        except Exception as exc:
            for target in self.targets:
                target.projection.reset()
            self.close()
            self.sizer.limit = self.sizer.smallest
            self._isolate_next = is_deterministic(exc) and not isolate
            raise
        self.sizer.after(result)
        return result

    def catch_up(self, progress: Progress | None = None) -> int:
        """Apply batches until the log has nothing new; returns the events applied."""
        events = 0
        head = 0
        while True:
            try:
                result = self.step()
            except DETERMINISTIC_ERRORS as exc:
                if not self._isolate_next:
                    raise
                log.warning("projection batch failed on its data; isolating its events",
                            error=f"{type(exc).__name__}: {exc}")
                continue
            events += result.events
            if progress is not None and self._conn is not None:
                head = max(head, result.position)
                if result.notifications == 0 or result.position >= head:
                    head = log_head(self._conn)
                progress(result.position, head, events)
            if result.notifications == 0:
                return events

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -------------------------------------------------------------- as a thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-projections", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.close()

    def _run(self) -> None:
        backoff = Backoff(FAILURE_WAIT_S, FAILURE_WAIT_S_MAX)
        while not self._stopping.is_set():
            try:
                result = self.step()
            except Exception as exc:
                if self._isolate_next:
                    # The data is at fault: the next batch finds the event and quarantines it.
                    log.warning("projection batch failed on its data; isolating its events",
                                error=f"{type(exc).__name__}: {exc}")
                    continue
                # Anything else: never skip an event. The projections stop where they are,
                # and their freshness headers show them lagging until the cause is fixed.
                wait_s = backoff.next_wait_s()
                log.exception("projection batch failed; retrying", wait_s=round(wait_s, 2))
                self._stopping.wait(wait_s)
                continue
            backoff.reset()
            if result.notifications == 0:
                self._stopping.wait(self.idle_wait_s)
            elif result.notifications < self.sizer.smallest:
                self._stopping.wait(self.linger_s)


# ------------------------------------------------------------------ rebuild


def rebuild(connect: Connect, decoder: EventDecoder, load_account: LoadAccount, name: str, *,
            batch_size: int = REBUILD_BATCH_NOTIFICATIONS_MAX,
            progress: Progress | None = None) -> BatchResult:
    """Rebuild one projection from the whole log into shadow tables, then swap them in.

    Reads keep answering from the live tables (which the runner keeps updating) until the
    swap, which happens in one transaction under the projections' lock once the shadow has
    caught up with the log.
    """
    projection = make_projection(name, load_account)
    position_name = name + SHADOW_SUFFIX
    with connect() as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                           (f"{LOCK_NAME}.rebuild.{name}",)).fetchone()
        if not (row and row[0]):
            raise RebuildInProgress(f"a rebuild of {name} is already running")
        try:
            return _rebuild(conn, decoder, projection, position_name, batch_size, progress)
        except BaseException:
            projection.reset()
            with contextlib.suppress(Exception), conn.transaction():
                for table in projection.tables:
                    drop_shadow(conn.cursor(), table)
                conn.execute("DELETE FROM projection_positions WHERE name = %s", (position_name,))
                conn.execute("DELETE FROM projection_quarantine WHERE projection = %s",
                             (position_name,))
            raise
        finally:
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))",
                             (f"{LOCK_NAME}.rebuild.{name}",))


def _rebuild_batch(conn: psycopg.Connection[Any], decoder: EventDecoder, target: Target,
                   limit: int) -> BatchResult:
    """A rebuild's batch; one that fails on its data is done again event by event."""
    try:
        return apply_batch(conn, decoder, [target], limit=limit, lock=False)
    except DETERMINISTIC_ERRORS:
        target.projection.reset()
        log.warning("rebuild batch failed on its data; isolating its events",
                    projection=target.projection.name)
        return apply_batch(conn, decoder, [target], limit=min(limit, BATCH_NOTIFICATIONS_MAX),
                           lock=False, isolate=True)


def _rebuild(conn: psycopg.Connection[Any], decoder: EventDecoder, projection: Projection,
             position_name: str, batch_size: int, progress: Progress | None) -> BatchResult:
    with conn.transaction(), conn.cursor() as cur:
        tables = {t: create_shadow(cur, t) for t in projection.tables}
        deferred = [build for shadow in tables.values()
                    for build in defer_indexes(cur, shadow, unique_too=projection.appends_only)]
        cur.execute("INSERT INTO projection_positions (name, position) VALUES (%s, 0)"
                    " ON CONFLICT (name) DO UPDATE SET position = 0, updated_at = now()",
                    (position_name,))
        cur.execute("DELETE FROM projection_quarantine WHERE projection = %s", (position_name,))
    target = Target(projection, position_name, tables)
    sizer = BatchSizer(batch_size, batch_size)
    head = log_head(conn)
    events = 0
    result = BatchResult(0, 0, 0)
    while result.position < head:
        result = _rebuild_batch(conn, decoder, target, sizer.limit)
        sizer.after(result)
        events += result.events
        if progress is not None:
            progress(result.position, head, events)
        if result.notifications == 0:
            break
    with conn.transaction(), conn.cursor() as cur:
        build_indexes(cur, deferred)
        # Statistics before the swap: a new table has none until autovacuum gets to it, and
        # without them the planner sorted a whole account's statement for each page.
        for table in tables.values():
            cur.execute(SQL("ANALYZE {}").format(Identifier(table)))
    with conn.transaction(), conn.cursor() as cur:
        # The last stretch and the swap under the lock: the runner waits, then finds the
        # rebuilt projection at the position the shadow reached.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LOCK_NAME,))
        while True:
            result = _rebuild_batch(conn, decoder, target, sizer.limit)
            sizer.after(result)
            events += result.events
            if result.notifications == 0:
                break
        if progress is not None:
            progress(result.position, result.position, events)
        for table in projection.tables:
            swap_in_shadow(cur, table)
        cur.execute("UPDATE projection_positions SET position = %s, updated_at = now()"
                    " WHERE name = %s", (result.position, projection.name))
        cur.execute("DELETE FROM projection_positions WHERE name = %s", (position_name,))
        # The rebuilt rows come with their own quarantine: the old one goes with the old rows.
        cur.execute("DELETE FROM projection_quarantine WHERE projection = %s",
                    (projection.name,))
        cur.execute("UPDATE projection_quarantine SET projection = %s WHERE projection = %s",
                    (projection.name, position_name))
    log.info("projection rebuilt", projection=projection.name, position=result.position,
             events=events)
    return BatchResult(0, events, result.position)
