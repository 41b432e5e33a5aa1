"""The ledger's use cases over the event store: load, call the domain, save with side rows.

Everything here is synchronous (eventsourcing is) and runs on the ledger's single writer
thread (see writer.py), so one process never races itself on an account; two processes are
kept apart by optimistic concurrency (a stale save fails as a whole and is retried).

Idempotency keys, the entry index and the expiry schedule commit in the same transaction as
the events (recorder.py), so "has this key had its effect?" and "did the effect happen?"
can never disagree.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg.sql import SQL, Identifier

from contracts.partitioning import partition_of
from ledger_service.app.catalogue import CATALOGUE_ID, Catalogue
from ledger_service.app.recorder import EntryRow, LedgerRows
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.errors import LedgerError
from ledger_service.domain.naming import event_name
from ledger_service.domain.pricing import PriceCatalog

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS_MAX = 5
# A load replays fewer events than this after the latest snapshot (LedgerApplication).
# Snapshots are cheap (taken from memory), and at 100 a cold load of the worst case replays
# 99 events: about 1.5 ms, against 3.5 ms for 199 (bench/account_load.py).
SNAPSHOT_INTERVAL = 100
AGGREGATE_CACHE_SIZE_MAX = 50_000
HOLD_NAMESPACE = uuid5(NAMESPACE_URL, "https://billing.example/ledger/holds")


def utcnow() -> datetime:
    return datetime.now(UTC)


class LedgerApplication(Application[UUID]):
    """The event store of the ledger: tables ledger_events and ledger_snapshots."""

    name = "Ledger"
    snapshotting_intervals = {BillingAccount: SNAPSHOT_INTERVAL}

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot each account whose save passed a multiple of its interval, as the
        account now is in memory, at the save's last version.

        The library snapshots at each multiple itself, and for that loads the account again
        from the store at that version: a cold load (the previous snapshot and up to an
        interval of events) per snapshot, which made every event of a busy account cost
        about one more replay. The aggregate in memory is the one whose events were just
        stored, so its state is the stored state (tests/property/test_snapshots.py).

        Loading an account's current version (always the end of a save) still replays fewer
        events than the interval: the save that passed the last multiple left a snapshot at
        or after it. A version inside a save (an as-of load) may replay up to that save's
        events more.
        """
        if self.snapshots is None:
            return
        first: dict[UUID, int] = {}  # each aggregate's first version in this save
        for event in processing_event.events:
            first.setdefault(event.originator_id, event.originator_version)
        snapshots = []
        for aggregate_id, aggregate in processing_event.aggregates.items():
            interval = self.snapshotting_intervals.get(type(aggregate))
            start = first.get(aggregate_id)
            if interval is None or start is None:
                continue
            if aggregate.version // interval > (start - 1) // interval:
                snapshot_class = getattr(type(aggregate), "Snapshot", self.snapshot_class)
                if snapshot_class is None:  # as the library: a snapshotted type needs one
                    raise AssertionError(f"{type(aggregate).__name__} has no Snapshot class")
                snapshots.append(snapshot_class.take(aggregate))
        if snapshots:  # one insert for all of them: an intake batch may pass a thousand
            self.snapshots.put(snapshots)


def ledger_env(base: Mapping[str, str]) -> dict[str, str]:
    """eventsourcing settings for the ledger on top of the PostgreSQL ones."""
    return {
        **base,
        "APPLICATION_RECORDER_TOPIC": "ledger_service.app.recorder:LedgerRecorder",
        # The writer thread is the only writer in a process: cached aggregates are current
        # unless another process wrote, which a failed save reveals (then we evict).
        "AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_SIZE_MAX),
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
        "IS_SNAPSHOTTING_ENABLED": "y",
        # msgspec for the events it can decode (a cold load replays up to 99 of them)
        "MAPPER_TOPIC": "ledger_service.projections.decoding:FastMapper",
    }


class ConflictingIdempotencyKey(LedgerError):
    """The same Idempotency-Key was used with a different request."""


class AccountNotFound(LedgerError):
    pass


class AccountExists(LedgerError):
    pass


@dataclass(slots=True)
class UnitOfWork:
    """Aggregates changed by one command or batch, with the rows to commit beside them."""

    accounts: dict[UUID, BillingAccount] = field(default_factory=dict)
    rows: LedgerRows = field(default_factory=LedgerRows)
    extra: list[Any] = field(default_factory=list)

    def touch(self, account: BillingAccount) -> BillingAccount:
        self.accounts[account.id] = account
        return account


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def hold_id_for(account_id: UUID, request_id: str) -> str:
    return str(uuid5(HOLD_NAMESPACE, f"{account_id}:{request_id}"))


class Ledger:
    """Use cases. Each public method is one transaction (retried on a concurrent write)."""

    def __init__(self, app: LedgerApplication, clock: Callable[[], datetime] = utcnow) -> None:
        self.app = app
        self.clock = clock
        self._catalogue: PriceCatalog | None = None
        self._catalogue_version: int | None = None
        # Authorize replies this process gave lately, encoded, by request id (intake.authorize).
        self.recent_replies: dict[str, bytes] = {}

    # ------------------------------------------------------------ plumbing

    @property
    def schema(self) -> str:
        return str(self.app.recorder.datastore.schema)  # type: ignore[attr-defined]

    def sql(self, text: str) -> SQL:
        return SQL(text.replace("{schema}", "{0}")).format(Identifier(self.schema))  # type: ignore[return-value]

    def query(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        datastore = self.app.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self.sql(text), params)
            return [tuple(row.values()) for row in cur.fetchall()] if cur.description else []

    def load(self, account_id: UUID) -> BillingAccount:
        try:
            account: Any = self.app.repository.get(account_id, projector_func=project)
        except AggregateNotFoundError:
            raise AccountNotFound(f"account {account_id} not found") from None
        if not isinstance(account, BillingAccount):
            raise AccountNotFound(f"account {account_id} not found")
        return account

    def load_many(self, account_ids: Sequence[UUID]) -> None:
        """Bring the accounts of a batch that are not cached into the cache with ONE query
        (each one's newest snapshot and the events after it), where `load` reads two per
        account: a snapshot look-up and the events after it (the library's
        `Repository._reconstruct_aggregate`). A batch of 500 fees over 100 cold accounts was
        a third of the writer's CPU that way (docs/benchmarks.md, renewals).

        The accounts are built as `load` builds them (the mapper's decoding, `project` from
        the snapshot) and put in the repository's cache, where `load` then finds them.
        Accounts with no events are left out (`load` says AccountNotFound). Without a cache
        or a snapshot store this does nothing: `load` reads each account itself."""
        repository = self.app.repository
        cache = repository.cache
        snapshots = self.app.snapshots
        if cache is None or snapshots is None or not account_ids:
            return
        missing: list[UUID] = []
        for account_id in dict.fromkeys(account_ids):
            try:
                cache.get(account_id)
            except KeyError:
                missing.append(account_id)
        if not missing:
            return
        events_table = self.app.recorder.events_table_name  # type: ignore[attr-defined]
        snapshots_table = snapshots.recorder.events_table_name  # type: ignore[attr-defined]
        query = SQL(
            "WITH wanted AS (SELECT unnest(%s::uuid[]) AS id),"
            " snap AS (SELECT w.id, s.originator_version, s.topic, s.state FROM wanted w"
            " CROSS JOIN LATERAL (SELECT originator_version, topic, state FROM {schema}.{snaps}"
            " WHERE originator_id = w.id ORDER BY originator_version DESC LIMIT 1) s)"
            " SELECT true, id, originator_version, topic, state FROM snap"
            " UNION ALL"
            " SELECT false, e.originator_id, e.originator_version, e.topic, e.state"
            " FROM wanted w LEFT JOIN snap ON snap.id = w.id JOIN {schema}.{events} e"
            " ON e.originator_id = w.id"
            " AND e.originator_version > coalesce(snap.originator_version, 0)"
            " ORDER BY 2, 3, 1 DESC"
        ).format(schema=Identifier(self.schema), snaps=Identifier(snapshots_table),
                 events=Identifier(events_table))
        datastore = self.app.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(query, (missing,))
            rows = [tuple(row.values()) for row in cur.fetchall()]
        to_event = self.app.mapper.to_domain_event
        to_snapshot = snapshots.mapper.to_domain_event
        events: dict[UUID, list[Any]] = {}
        for is_snapshot, originator_id, version, topic, state in rows:
            stored = StoredEvent(originator_id, version, topic, bytes(state))
            events.setdefault(originator_id, []).append(
                to_snapshot(stored) if is_snapshot else to_event(stored))
        for account_id, history in events.items():
            account = project(None, history)
            if isinstance(account, BillingAccount):
                cache.put(account_id, account)

    def read(self, account_id: UUID) -> BillingAccount:
        """The account as stored now. The cache is current for this process's own writes;
        another process may have written since, which one indexed look-up reveals."""
        account = self.load(account_id)
        if any(True for _ in self.app.events.get(account_id, gt=account.version, limit=1)):
            self.evict([account_id])
            account = self.load(account_id)
        return account

    def version_at(self, account_id: UUID, as_of: datetime) -> int | None:
        """The account's last version recorded at or before `as_of`; None before it opened.

        A binary search over versions, one primary-key look-up each (about 20 for a million
        events), where a scan read the whole history. It takes "recorded by as_of" to be a
        prefix of the versions, as the scan did (it stopped at the first event after the
        instant): one writer applies an account's commands in turn at the service's clock, and
        only a clock stepped backwards could break that.
        """
        newest = self.query("SELECT max(originator_version) FROM {schema}.ledger_events"
                            " WHERE originator_id = %s", (account_id,))
        if not newest or newest[0][0] is None:
            return None
        first = self._recorded_at(account_id, 1)
        if first is None or first > as_of:
            return None
        low, high = 1, int(newest[0][0])  # recorded(low) holds; nothing above high is
        while low < high:
            middle = (low + high + 1) // 2
            stamp = self._recorded_at(account_id, middle)
            if stamp is not None and stamp <= as_of:
                low = middle
            else:
                high = middle - 1
        return low

    def _recorded_at(self, account_id: UUID, version: int) -> datetime | None:
        rows = self.query(
            "SELECT (convert_from(state, 'UTF8')::json -> 'timestamp' ->> '_data_')::timestamptz"
            " FROM {schema}.ledger_events WHERE originator_id = %s AND originator_version = %s",
            (account_id, version))
        return rows[0][0] if rows else None

    def evict(self, ids: Iterable[UUID]) -> None:
        cache = self.app.repository.cache
        if cache is None:
            return
        for account_id in ids:
            with contextlib.suppress(KeyError):
                cache.get(account_id, evict=True)

    def evict_partitions(self, partitions: Iterable[int], count: int) -> int:
        """Drop the cached accounts of `partitions` (of `count`), as this process takes them
        over: another process applied them meanwhile, so what is cached may be stale. Returns
        how many were dropped."""
        cache = self.app.repository.cache
        if cache is None:
            return 0
        wanted = set(partitions)
        stale = [key for key in list(cache.cache)
                 if isinstance(key, UUID) and key != CATALOGUE_ID
                 and partition_of(key, count) in wanted]
        self.evict(stale)
        return len(stale)

    def commit(self, work: UnitOfWork) -> None:
        """Save the changed aggregates and the side rows in one transaction."""
        for account in work.accounts.values():
            self._index(account, work.rows)
        try:
            self.app.save(*work.accounts.values(), *work.extra, ledger_rows=work.rows)
        except Exception:
            # The cached objects carry events that were not stored: drop them.
            self.evict(work.accounts)
            raise

    def run(self, command: Callable[[UnitOfWork], Any]) -> Any:
        """Run ``command`` in a fresh unit of work; retry when a concurrent writer won."""
        for attempt in range(1, SAVE_ATTEMPTS_MAX + 1):
            work = UnitOfWork()
            try:
                result = command(work)
            except LedgerError:
                # A refusal writes nothing, so no version conflict reveals an account cached
                # here that another ledger process changed since: if one was, decide again.
                stale = any(self.behind(a) for a in work.accounts.values())
                self.evict(work.accounts)  # a command refused half-way may leave events
                if stale and attempt < SAVE_ATTEMPTS_MAX:
                    log.info("refusal on a stale cached account; deciding again")
                    continue
                raise
            except Exception:
                self.evict(work.accounts)
                raise
            if not work.accounts and not work.rows and not work.extra:
                return result
            try:
                self.commit(work)
            except IntegrityError:
                if attempt == SAVE_ATTEMPTS_MAX:
                    raise
                log.info("concurrent write; retrying", attempt=attempt)
                continue
            return result
        raise AssertionError("unreachable")

    def behind(self, account: BillingAccount) -> bool:
        """Whether the log holds events of the account beyond what this copy was loaded from
        (another ledger process wrote since it was cached); its own pending events aside.

        A refusal writes no event, so no version conflict reveals a stale copy: callers about
        to refuse on a cached account ask this, and decide again on `reloaded` when it is."""
        loaded = account.version - len(account.pending_events)
        return any(True for _ in self.app.events.get(account.id, gt=loaded, limit=1))

    def reloaded(self, account_id: UUID) -> BillingAccount:
        """The account as stored, whatever this process had cached."""
        self.evict([account_id])
        return self.load(account_id)

    def _index(self, account: BillingAccount, rows: LedgerRows) -> None:
        for event in account.pending_events:
            version = event.originator_version
            lines = getattr(event, "lines", None)
            if lines is not None:
                # A fee of a batch is indexed as the FeeCharged event of that fee would be.
                kind = "FeeCharged" if isinstance(event, BillingAccount.FeesCharged) else "usage"
                rows.entries.extend(
                    EntryRow(line["entry_id"], account.id, version, kind) for line in lines
                )
                continue
            entry_id = getattr(event, "entry_id", None)
            if entry_id is not None:
                rows.entries.append(
                    EntryRow(entry_id, account.id, version, event_name(type(event)))
                )
            expires_at = getattr(event, "expires_at", None)
            if isinstance(expires_at, str):
                rows.schedule.append((account.id, datetime.fromisoformat(expires_at)))

    def stored_key(self, scope: str, key: str) -> tuple[str | None, bytes | None] | None:
        rows = self.query(
            "SELECT request_hash, response FROM {schema}.idempotency_keys"
            " WHERE scope = %s AND key = %s",
            (scope, key),
        )
        if not rows:
            return None
        hash_, response = rows[0]
        return hash_, bytes(response) if response is not None else None

    def seen_keys(self, scope: str, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        rows = self.query(  # a primary-key probe per key (intake._stored_replies says why)
            "SELECT k.key FROM unnest(%s::text[]) AS wanted(key)"
            " JOIN {schema}.idempotency_keys k ON k.scope = %s AND k.key = wanted.key",
            (list(keys), scope),
        )
        return {row[0] for row in rows}

    # ------------------------------------------------------------ catalogue

    def catalogue(self) -> PriceCatalog:
        if self._catalogue is None:
            catalogue = self._load_catalogue()
            self._catalogue, self._catalogue_version = catalogue.price_catalog(), catalogue.version
        return self._catalogue

    def refresh_catalogue(self) -> bool:
        """Forget the cached catalogue if another process replaced it (the catalogue consumer
        is shared by the ledger processes, so only one of them applies an update). One
        indexed look-up; True when it was stale."""
        if self._catalogue is None:
            return False
        rows = self.query("SELECT max(originator_version) FROM {schema}.ledger_events"
                          " WHERE originator_id = %s", (CATALOGUE_ID,))
        if rows and rows[0][0] is not None and rows[0][0] != self._catalogue_version:
            self._catalogue = None
            self.evict([CATALOGUE_ID])
            return True
        return False

    def _load_catalogue(self) -> Catalogue:
        try:
            return self.app.repository.get(CATALOGUE_ID)
        except AggregateNotFoundError:
            catalogue = Catalogue.from_default(self.clock())
            try:
                self.app.save(catalogue)
            except IntegrityError:  # another process seeded it first
                return self.app.repository.get(CATALOGUE_ID)
            return catalogue

    def replace_catalogue(self, version: str, products: list[dict[str, Any]], actor: str) -> bool:
        """Replace the price catalogue; the same version twice changes nothing."""
        def command(work: UnitOfWork) -> bool:
            catalogue = self._load_catalogue()
            changed = catalogue.replace(version, products, actor, self.clock())
            if changed:
                work.extra.append(catalogue)
            return changed

        try:
            changed = bool(self.run(command))
        finally:
            self._catalogue = None
            self.evict([CATALOGUE_ID])
        return changed


def project(aggregate: Any, events: Iterable[Any]) -> Any:
    """eventsourcing's project_aggregate without its per-event isinstance assert, which was
    four tenths of replaying the events after a snapshot (bench/account_load.py)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def expiry(now: datetime, ttl_s: int) -> datetime:
    return now + timedelta(seconds=ttl_s)
