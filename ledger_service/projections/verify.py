"""`ledgerctl verify`: recompute everything from the log and report every divergence.

In one REPEATABLE READ snapshot (so the log and the projections are read as of one instant),
every account's events are read in version order and checked:

- the hash chain: each event's stored hash against the hash recomputed from its content and
  its predecessor's hash (an edited event breaks at itself, a deleted one at its successor),
  versions without gaps from 1, the first event an Opened;
- double entry: the postings of every event, and of every usage line, sum to zero per
  currency (and so do all postings of the whole log);
- the replay: the events applied in order by the aggregate itself, each `balance_after` equal
  to the replayed balance, the aggregate's invariants holding after every event;
- the projections: each one's rows against what the replay says they should be at that
  projection's own position (a lagging projection is not a divergence, a wrong row is), and
  no projection row for an account the log does not have;
- the entry index: every statement entry it points to is still in the log (catches a
  deleted last event, which leaves no gap behind it);
- the event store's snapshots, which loading an account starts from: each one's state
  against the replay at its version, and none past the account's last event.
- the signed anchors (for the whole log): each one's Merkle root of chain heads recomputed
  from the same pass, so the log is read once however many anchors there are
  (anchors.py `AnchoredRoots`); every period close and every anchor since the last one.

Tables are streamed in account order and merged, so memory follows one account, not the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import chain, groupby
from typing import Any, Final, cast
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import IsolationLevel

from contracts.ledger import LedgerAnchor
from ledger_service.anchors import (
    AccountHeads,
    AnchoredRoots,
    anchors_to_check,
    problem_before_replay,
)
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.chain import GENESIS_HASH, chain_keyring, is_keyed, verify_chain
from ledger_service.domain.postings import event_postings, sum_by_currency
from ledger_service.domain.times import format_time
from ledger_service.projections.builders import PROJECTION_NAMES, credits_of, usage_day, usage_lines
from ledger_service.projections.decoding import EventDecoder, StoredRow
from ledger_service.projections.eventlog import event_rows, log_head
from ledger_service.projections.runner import quarantined_events
from ledger_service.projections.statement import entry_seq, statement_entries

ROWS_FETCHED_PER_ROUND_TRIP: Final = 5_000
QUARANTINED_SHOWN_MAX: Final = 1_000
STATEMENT_FIELDS: Final = ("entry_id", "kind", "amount_micros", "balance_after_micros",
                           "description")
# Aggregate attributes added after snapshots were first taken: a snapshot from before lacks
# them, which is its age, not tampering (the account reads them another way:
# BillingAccount.closed_at and app/accounts.py closed_at_of).
SNAPSHOT_FIELDS_ADDED: Final = frozenset({"_closed_at"})
BALANCE_FIELDS: Final = ("currency", "account_type", "closed", "balance_micros",
                         "available_micros", "held_micros", "credit_limit_micros", "credits",
                         "version", "position")
DIVERGENCES_PER_ACCOUNT_MAX: Final = 50  # one broken account must not drown the report
VALUE_TEXT_MAX: Final = 120

Progress = Callable[[int], None]  # events checked so far


@dataclass(frozen=True, slots=True)
class Divergence:
    account_id: UUID | None
    check: str  # chain, version_gap, undecodable, postings, balance_after, replay, ...
    where: str  # "version 7", "entry <id>", "day 2026-11-22 sms"
    expected: str
    found: str


@dataclass(slots=True)
class VerifyReport:
    accounts: int = 0
    events: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    log_position: int = 0
    postings_total: dict[str, int] = field(default_factory=dict)  # currency -> sum, must be 0
    divergences: list[Divergence] = field(default_factory=list)
    elapsed_s: float = 0.0
    # A log written before the chain was keyed (`ledgerctl verify --allow-unkeyed`).
    allow_unkeyed: bool = False
    unkeyed_events: int = 0
    anchors_checked: int = 0
    anchors_skipped: int = 0  # interval anchors before the last period close (covered by it)

    @property
    def ok(self) -> bool:
        return not self.divergences


def _text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= VALUE_TEXT_MAX else text[:VALUE_TEXT_MAX - 1] + "…"


# ------------------------------------------------------------------ table streams


class RowStream:
    """Rows of a table in account order, taken account by account (a merge join)."""

    def __init__(self, rows: Iterator[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._head = next(rows, None)
        self.orphans: list[UUID] = []  # accounts with rows but no events

    def take(self, account_id: UUID) -> Iterator[tuple[Any, ...]]:
        self._skip_before(account_id)
        while self._head is not None and self._head[0] == account_id:
            row = self._head
            self._head = next(self._rows, None)
            yield row

    def finish(self) -> list[UUID]:
        while self._head is not None:
            self._orphan(self._head[0])
            self._head = next(self._rows, None)
        return self.orphans

    def _skip_before(self, account_id: UUID) -> None:
        while self._head is not None and self._head[0] < account_id:
            self._orphan(self._head[0])
            self._head = next(self._rows, None)

    def _orphan(self, account_id: UUID) -> None:
        if not self.orphans or self.orphans[-1] != account_id:
            self.orphans.append(account_id)


def _stream(conn: psycopg.Connection[Any], name: str, query: str,
            account_id: UUID | None, key: str = "account_id") -> Iterator[tuple[Any, ...]]:
    cur = conn.cursor(name=name, binary=True)
    cur.itersize = ROWS_FETCHED_PER_ROUND_TRIP
    if account_id is None:
        cur.execute(query.format(where=""))
    else:
        cur.execute(query.format(where=f"WHERE {key} = %s"), (account_id,))
    return iter(cur)


_TABLE_QUERIES: Final = {
    "balances": "SELECT account_id, currency, account_type, closed, balance_micros,"
                " available_micros, held_micros, credit_limit_micros, credits, version,"
                " position FROM balances {where} ORDER BY account_id",
    "statement": "SELECT account_id, entry_seq, entry_id, kind, amount_micros,"
                 " balance_after_micros, description FROM statement_entries {where}"
                 " ORDER BY account_id, entry_seq",
    "usage": "SELECT account_id, day, product, quantity, amount_micros, lines FROM usage_daily"
             " {where} ORDER BY account_id, day, product",
    "holds": "SELECT account_id, hold_id, amount_micros, expires_at, product, quantity"
             " FROM open_holds {where} ORDER BY account_id, hold_id",
}
_SNAPSHOTS_QUERY: Final = ("SELECT originator_id, originator_version, topic, state"
                           " FROM ledger_snapshots {where} ORDER BY originator_id,"
                           " originator_version")


# ------------------------------------------------------------------ one account


class AccountAudit:
    """Checks one account's events as they stream past, then its projection rows."""

    def __init__(self, account_id: UUID, positions: dict[str, int],
                 streams: dict[str, RowStream], report: VerifyReport,
                 heads: AccountHeads | None = None) -> None:
        self.account_id = account_id
        self.heads = heads  # its chain heads at the anchored positions
        self.positions = positions
        self.streams = streams
        self.report = report
        self.found: list[Divergence] = []
        self.account: BillingAccount | None = None
        self.previous_hash: str | None = GENESIS_HASH
        self.expected_version = 1
        self.replay_ok = True
        self.position = 0  # of the last event applied
        self.balance_expected: tuple[Any, ...] | None = None
        self.holds_expected: dict[str, tuple[Any, ...]] | None = None
        self.usage_expected: dict[tuple[date, str], list[int]] = {}
        self.statement_rows = streams["statement"].take(account_id)
        self._pushed_back: tuple[Any, ...] | None = None
        self.snapshots = streams["snapshots"].take(account_id)
        self.next_snapshot = next(self.snapshots, None)
        # After one balance_after disagrees, every later one does by the same amount: report
        # the first, count the rest.
        self.balance_after_echoes = 0

    def flag(self, check: str, where: str, expected: Any, found: Any) -> None:
        if len(self.found) < DIVERGENCES_PER_ACCOUNT_MAX:
            self.found.append(Divergence(self.account_id, check, where, _text(expected),
                                         _text(found)))

    # -------------------------------------------------------------- events

    def feed(self, row: StoredRow, decoder: EventDecoder) -> None:
        where = f"version {row.originator_version}"
        if row.originator_version != self.expected_version:
            self.flag("version_gap", where, f"version {self.expected_version}",
                      f"version {row.originator_version}")
            self.replay_ok = False
        self.expected_version = row.originator_version + 1
        try:
            event = decoder.decode(row)
        except Exception as exc:
            self.flag("undecodable", where, "a decodable event", f"{type(exc).__name__}: {exc}")
            self.previous_hash = None
            self.replay_ok = False
            if self.heads is not None:
                self.heads.see(row.position, row.originator_version, _raw_chain_hash(row))
            return
        if self.heads is not None:
            self.heads.see(row.position, row.originator_version,
                           getattr(event, "chain_hash", None))
        self._check_chain(event, row.state, where)
        self._check_postings(event, where)
        self._capture_before(row.position)
        if self.replay_ok:
            self._replay(event, where)
        while self.next_snapshot is not None \
                and self.next_snapshot[1] <= row.originator_version:
            if self.next_snapshot[1] == row.originator_version and self.replay_ok:
                self._check_snapshot(self.next_snapshot, decoder)
            self.next_snapshot = next(self.snapshots, None)
        self.position = row.position
        if row.position <= self.positions["statement"]:
            self._check_statement(event, row.position)
        if row.position <= self.positions["usage"]:
            for line in usage_lines(event):
                sums = self.usage_expected.setdefault(
                    (usage_day(line["occurred_at"]), line["product"]), [0, 0, 0])
                sums[0] += line["quantity"]
                sums[1] += line["amount_micros"]
                sums[2] += 1

    def _check_chain(self, event: Any, state: bytes, where: str) -> None:
        if self.expected_version == 2 and not isinstance(event, BillingAccount.Opened):
            self.flag("first_event", where, "Opened", type(event).__name__)
        if self.previous_hash is not None:
            # the stored state: the chain covers an upcast event as it was stored
            for broken in verify_chain([event], self.previous_hash, [state]):
                self.flag("chain", where, f"hash {broken.expected} (recomputed)",
                          f"hash {broken.found} (stored; {broken.reason})")
        stored = getattr(event, "chain_hash", None)
        if isinstance(stored, str) and not is_keyed(stored) and chain_keyring() is not None:
            self.report.unkeyed_events += 1
            if not self.report.allow_unkeyed:
                self.flag("unkeyed", where, "a keyed hash (kid:hmac)",
                          "an unkeyed SHA-256: anyone with database access could have made it")
        self.previous_hash = stored if isinstance(stored, str) else None

    def _check_postings(self, event: Any, where: str) -> None:
        totals = self.report.postings_total
        for currency, amount in sum_by_currency(event_postings(event)).items():
            totals[currency] = totals.get(currency, 0) + amount
            if amount != 0:
                self.flag("postings", where, f"{currency} sum 0", f"{currency} sum {amount}")
        for index, line in enumerate(getattr(event, "lines", None) or ()):
            for currency, amount in sum_by_currency(line["postings"]).items():
                if amount != 0:
                    self.flag("postings", f"{where} line {index}", f"{currency} sum 0",
                              f"{currency} sum {amount}")

    def _replay(self, event: Any, where: str) -> None:
        before = self.account.balance_micros if self.account is not None else 0
        try:
            self.account = event.mutate(self.account)
            assert self.account is not None
            self.account.check_invariants()
        except Exception as exc:
            self.flag("replay", where, "the event applies", f"{type(exc).__name__}: {exc}")
            self.replay_ok = False
            return
        balance = self.account.balance_micros
        for index, line in enumerate(getattr(event, "lines", None) or ()):
            before -= line["amount_micros"]
            if line["balance_after_micros"] != before:
                self._flag_balance_after(f"{where} line {index}", before,
                                         line["balance_after_micros"])
        stated = getattr(event, "balance_after_micros", None)
        if stated is not None and stated != balance:
            self._flag_balance_after(where, balance, stated)

    def _check_snapshot(self, row: tuple[Any, ...], decoder: EventDecoder) -> None:
        """A stored snapshot against the replay at its version, both as the mapper stores
        them (so a tuple and a list, say, compare as the JSON they become)."""
        _, version, topic, state = row
        where = f"snapshot at version {version}"
        mapper = decoder.mapper
        try:
            stored: dict[str, Any] = cast(Any, mapper.to_domain_event(StoredEvent(
                self.account_id, version, topic, bytes(state)))).state
        except Exception as exc:
            self.flag("snapshot", where, "a decodable snapshot", f"{type(exc).__name__}: {exc}")
            return
        account = self.account
        assert account is not None
        replayed: dict[str, Any] = cast(Any, mapper.to_domain_event(mapper.to_stored_event(
            type(account).Snapshot.take(account)))).state
        differing = sorted(k for k in stored.keys() | replayed.keys()
                           if stored.get(k) != replayed.get(k)
                           and not (k in SNAPSHOT_FIELDS_ADDED and k not in stored))
        if differing:
            self.flag("snapshot", where, f"the replayed state ({', '.join(differing)})",
                      ", ".join(f"{k}={stored.get(k)!r}" for k in differing))

    def _flag_balance_after(self, where: str, replayed: int, stated: int) -> None:
        if any(d.check == "balance_after" for d in self.found):
            self.balance_after_echoes += 1
        else:
            self.flag("balance_after", where, f"{replayed} (replayed)", f"{stated} (stated)")

    def _capture_before(self, position: int) -> None:
        """The state the balances and holds projections should show is the one after the
        last event at or before their position: keep it as we pass that point."""
        if self.balance_expected is None and position > self.positions["balances"]:
            self.balance_expected = self._balance_now()
        if self.holds_expected is None and position > self.positions["holds"]:
            self.holds_expected = self._holds_now()

    def _balance_now(self) -> tuple[Any, ...]:
        account = self.account
        if account is None or not self.replay_ok:
            return ()
        settings = account.settings
        return (settings.currency, settings.account_type, settings.closed,
                account.balance_micros, account.available_micros, account.held_micros,
                settings.credit_limit_micros, credits_of(account), account.version,
                self.position)

    def _holds_now(self) -> dict[str, tuple[Any, ...]]:
        if self.account is None or not self.replay_ok:
            return {}
        return {h.hold_id: (h.amount_micros, h.expires_at, h.product, h.quantity)
                for h in self.account.open_holds}

    def _check_statement(self, event: Any, position: int) -> None:
        for entry in statement_entries(event):
            seq = entry_seq(position, entry.line)
            expected = (str(entry.entry_id), entry.kind, entry.amount_micros,
                        entry.balance_after_micros, entry.description)
            found = self._statement_row(seq, entry.entry_id)
            if found is None or found == expected:
                continue
            for name, want, got in zip(STATEMENT_FIELDS, expected, found, strict=True):
                if want != got:
                    self.flag("projection:statement", f"entry {entry.entry_id} {name}", want,
                              got)

    def _statement_row(self, seq: int, entry_id: str) -> tuple[Any, ...] | None:
        """The stored row at ``seq``; rows before it are extra, a row after it waits."""
        while (row := self._next_statement_row()) is not None:
            if row[1] < seq:
                self._flag_extra_entry(row)
                continue
            if row[1] > seq:
                self._pushed_back = row
                break
            return (str(row[2]), row[3], row[4], row[5], row[6])
        self.flag("projection:statement", f"entry {entry_id}", "a row", "missing")
        return None

    def _next_statement_row(self) -> tuple[Any, ...] | None:
        if self._pushed_back is not None:
            row, self._pushed_back = self._pushed_back, None
            return row
        return next(self.statement_rows, None)

    def _flag_extra_entry(self, row: tuple[Any, ...]) -> None:
        self.flag("projection:statement", f"entry {row[2]}", "no such entry",
                  f"a row at seq {row[1]}")

    # -------------------------------------------------------------- projections

    def finish(self) -> list[Divergence]:
        self._capture_before(1 << 62)
        while self.next_snapshot is not None:  # a snapshot past the last event
            self.flag("snapshot", f"snapshot at version {self.next_snapshot[1]}",
                      f"no snapshot past version {self.expected_version - 1}",
                      "a snapshot of events the log does not have")
            self.next_snapshot = next(self.snapshots, None)
        while (row := self._next_statement_row()) is not None:
            self._flag_extra_entry(row)
        # Every stream is read past this account even when the replay broke, or its rows
        # would count as orphans of the next account.
        balances = list(self.streams["balances"].take(self.account_id))
        usage = list(self.streams["usage"].take(self.account_id))
        holds = list(self.streams["holds"].take(self.account_id))
        if self.balance_after_echoes:
            self.flag("balance_after", "later events", "agree once the first is fixed",
                      f"{self.balance_after_echoes} more disagree by the same cause")
        self._check_usage(usage)
        if self.replay_ok:
            self._check_balance(balances)
            self._check_holds(holds)
        return self.found

    def _check_balance(self, rows: list[tuple[Any, ...]]) -> None:
        expected = self.balance_expected or ()
        if not expected:
            for _ in rows:
                self.flag("projection:balances", "row", "no row (not yet projected)", "a row")
            return
        if not rows:
            self.flag("projection:balances", "row", "a row", "missing")
            return
        for name, want, got in zip(BALANCE_FIELDS, expected, rows[0][1:], strict=True):
            if name == "credits":
                self._check_credits(want, got)
            elif want != got:
                self.flag("projection:balances", name, want, got)

    def _check_credits(self, expected: list[dict[str, Any]], found: Any) -> None:
        want = {c["grant_id"]: c for c in expected}
        got = {c.get("grant_id"): c for c in found} if isinstance(found, list) else {}
        for grant_id in sorted(set(want) | set(got), key=str):
            a, b = want.get(grant_id), got.get(grant_id)
            if a is None or b is None:
                self.flag("projection:balances", f"credits {grant_id}",
                          "a grant" if a else "no such grant", "a grant" if b else "missing")
                continue
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    self.flag("projection:balances", f"credits {grant_id} {key}", a.get(key),
                              b.get(key))

    def _check_usage(self, rows: list[tuple[Any, ...]]) -> None:
        found = {(r[1], r[2]): [r[3], r[4], r[5]] for r in rows}
        for key in sorted(set(found) | set(self.usage_expected)):
            want, got = self.usage_expected.get(key), found.get(key)
            if want != got:
                self.flag("projection:usage", f"day {key[0]} {key[1]}",
                          want or "no row", got or "missing")

    def _check_holds(self, rows: list[tuple[Any, ...]]) -> None:
        found = {r[1]: (r[2], r[3], r[4], r[5]) for r in rows}
        expected = self.holds_expected or {}
        for hold_id in sorted(set(found) | set(expected)):
            want, got = expected.get(hold_id), found.get(hold_id)
            if want is not None and got is not None:
                got = (got[0], format_time(got[1]), got[2], got[3])
            if want != got:
                self.flag("projection:holds", f"hold {hold_id}", want or "no row",
                          got or "missing")


# ------------------------------------------------------------------ the whole log


def verify(conn: psycopg.Connection[Any], decoder: EventDecoder, *,
           account_id: UUID | None = None, progress: Progress | None = None,
           allow_unkeyed: bool = False, anchors: Sequence[LedgerAnchor] = (),
           trusted_anchor_key: bytes | None = None) -> VerifyReport:
    """Check the log (or one account's part of it) and the projections against it, and,
    for the whole log, against ``anchors`` (signed with ``trusted_anchor_key``): every anchor
    checked in the same single pass over the log."""
    started = time.perf_counter()
    report = VerifyReport(allow_unkeyed=allow_unkeyed)
    saved = conn.autocommit, conn.isolation_level, conn.read_only
    conn.autocommit = False
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            _verify_in_snapshot(conn, decoder, account_id, progress, report,
                                anchors if account_id is None else (), trusted_anchor_key)
    finally:
        conn.autocommit, conn.isolation_level, conn.read_only = saved
    for currency, total in sorted(report.postings_total.items()):
        if total != 0 and account_id is None:
            report.divergences.append(Divergence(None, "postings", "whole log",
                                                 f"{currency} sum 0", f"{currency} sum {total}"))
    if progress is not None:
        progress(report.events)
    report.elapsed_s = time.perf_counter() - started
    return report


def _verify_in_snapshot(conn: psycopg.Connection[Any], decoder: EventDecoder,
                        account_id: UUID | None, progress: Progress | None,
                        report: VerifyReport, anchors: Sequence[LedgerAnchor],
                        trusted_anchor_key: bytes | None) -> None:
    report.positions = _positions(conn)
    report.log_position = log_head(conn)
    roots = _anchored_roots(anchors, trusted_anchor_key, report)
    streams = {name: RowStream(_stream(conn, f"verify_{name}", _TABLE_QUERIES[name],
                                       account_id)) for name in PROJECTION_NAMES}
    streams["snapshots"] = RowStream(_stream(conn, "verify_snapshots", _SNAPSHOTS_QUERY,
                                             account_id, key="originator_id"))
    rows_in_account_order = event_rows(conn, account_id=account_id, order="account",
                                       cursor_name="verify_events")
    for current, rows in groupby(rows_in_account_order, key=lambda r: r.originator_id):
        first = next(rows)
        if not first.is_account_event:
            continue  # the price catalogue: no chain, no postings
        heads = roots.account(current) if roots is not None else None
        audit = AccountAudit(current, report.positions, streams, report, heads)
        report.accounts += 1
        for stored in chain([first], rows):
            audit.feed(stored, decoder)
            report.events += 1
            if progress is not None and report.events % 10_000 == 0:
                progress(report.events)
        report.divergences.extend(audit.finish())
        if heads is not None:
            heads.finish()
    for name, stream in streams.items():
        for orphan in stream.finish():
            check = "snapshot" if name == "snapshots" else f"projection:{name}"
            report.divergences.append(Divergence(
                orphan, check, "rows", "rows for an account", "no events"))
    if roots is not None:
        report.divergences.extend(_anchor_divergence(a, problem) for a, problem in roots.problems())
    report.divergences.extend(_missing_indexed_events(conn, account_id))
    report.divergences.extend(_quarantined_events(conn, account_id))


def _anchored_roots(anchors: Sequence[LedgerAnchor], trusted_key: bytes | None,
                    report: VerifyReport) -> AnchoredRoots | None:
    """The anchors to recompute in the pass; those wrong before any replay (signature, a log
    that ends before them) are reported now."""
    if not anchors:
        return None
    if trusted_key is None:
        raise ValueError("anchors to check need the trusted anchor key")
    chosen, report.anchors_skipped = anchors_to_check(anchors)
    report.anchors_checked = len(chosen)
    replayed = []
    for anchor in chosen:
        problem = problem_before_replay(anchor, trusted_key, report.log_position)
        if problem is None:
            replayed.append(anchor)
        else:
            report.divergences.append(_anchor_divergence(anchor, problem))
    return AnchoredRoots(replayed) if replayed else None


def _anchor_divergence(anchor: LedgerAnchor, problem: str) -> Divergence:
    return Divergence(None, "anchor", f"{anchor.anchor_id} ({anchor.created_at})",
                      f"root {anchor.merkle_root} at position {anchor.position}", problem)


def _raw_chain_hash(row: StoredRow) -> str | None:
    """The chain hash of an event the mapper cannot decode, read from its JSON as
    `make_anchor` reads it; None when it is not JSON either."""
    try:
        state = msgspec.json.decode(row.state)
    except msgspec.DecodeError:
        return None
    value = state.get("chain_hash") if isinstance(state, dict) else None
    return value if isinstance(value, str) else None


def _quarantined_events(conn: psycopg.Connection[Any],
                        account_id: UUID | None) -> list[Divergence]:
    """Events a projection set aside (runner.quarantine): its rows lack them, so verify fails
    until the cause is fixed and the projection rebuilt."""
    return [Divergence(q.account_id, f"quarantined:{q.projection}",
                       f"{q.event_type} at position {q.position}", "applied to the projection",
                       _text(q.error))
            for q in quarantined_events(conn, account_id, limit=QUARANTINED_SHOWN_MAX)]


def _positions(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT name, position FROM projection_positions"
                        " WHERE name = ANY(%s)", (list(PROJECTION_NAMES),)).fetchall()
    positions = {name: 0 for name in PROJECTION_NAMES}
    positions.update({name: int(position) for name, position in rows})
    return positions


def _missing_indexed_events(conn: psycopg.Connection[Any],
                            account_id: UUID | None) -> list[Divergence]:
    query = ("SELECT i.account_id, i.originator_version, i.entry_id FROM entry_index i"
             " WHERE NOT EXISTS (SELECT 1 FROM ledger_events e WHERE e.originator_id ="
             " i.account_id AND e.originator_version = i.originator_version)")
    params: tuple[Any, ...] = ()
    if account_id is not None:
        query += " AND i.account_id = %s"
        params = (account_id,)
    rows = conn.execute(query + " ORDER BY 1, 2 LIMIT 1000", params).fetchall()
    return [Divergence(a, "entry_index", f"version {v}", f"the event holding entry {e}",
                       "missing from the log") for a, v, e in rows]

