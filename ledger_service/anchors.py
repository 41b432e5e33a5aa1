"""Anchors: signed checkpoints that tie the log to something outside the database.

A keyed hash chain (domain/chain.py) stops anyone without the key from rewriting an account's
history unnoticed; it does not stop someone from deleting an account's newest events, or a
whole account, or restoring an older copy of the database. An anchor does: at an interval and
at every calendar-month close, the follower rolls every account's chain head (account id,
version, hash) at a log position into one Merkle root, signs it with Ed25519, and sends it out
of the database: the ANCHORS stream (its own ten-year retention) and a JSON-lines file an
operator archives. `ledgerctl verify --anchors FILE` recomputes the heads at each anchor's
position from the log, all anchors in the one pass verify reads the log in (`AnchoredRoots`),
and compares roots; any edit, deletion, truncation or re-ordering below an anchored position
changes a head, so the root, and the signature cannot be re-made without the signing key,
which is not in the database either. It checks every period close and the anchors since the
last one (`anchors_to_check`).

The Merkle tree is RFC 6962's (leaf = SHA-256(0x00 || leaf bytes), node = SHA-256(0x01 || left
|| right), split at the largest power of two below n), computed streaming over heads sorted by
account id, so memory stays O(log n) however many accounts there are.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
import psycopg
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts.ledger import LedgerAnchor
from contracts.subjects import LEDGER_ANCHORS
from ledger_service.domain.times import format_time
from ledger_service.projections.eventlog import log_head
from services.backoff import Backoff

log = structlog.get_logger(__name__)

EMPTY_ROOT: Final = hashlib.sha256(b"").hexdigest()
SIGNED_PREFIX: Final = "billing-ledger-anchor/v1"
Reason = Literal["interval", "period_close", "manual"]

# Account events carry a chain hash; the price catalogue's do not.
_HEADS_SINCE: Final = """
SELECT DISTINCT ON (originator_id) originator_id, originator_version,
       convert_from(state, 'UTF8')::json ->> 'chain_hash'
FROM ledger_events
WHERE notification_id > %s AND notification_id <= %s
  AND convert_from(state, 'UTF8')::json ->> 'chain_hash' IS NOT NULL
ORDER BY originator_id, originator_version DESC
"""

# ------------------------------------------------------------------------- the Merkle tree

def leaf_bytes(account_id: UUID, version: int, chain_hash: str) -> bytes:
    return account_id.bytes + version.to_bytes(8, "big") + chain_hash.encode()


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleRoot:
    """RFC 6962's Merkle tree hash, fed one leaf at a time, in order."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes decreasing
        self.count = 0

    def add(self, data: bytes) -> None:
        size, digest = 1, _leaf(data)
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            size, digest = left_size + size, _node(left, digest)
        self._stack.append((size, digest))
        self.count += 1

    def hexdigest(self) -> str:
        if not self._stack:
            return EMPTY_ROOT
        _, digest = self._stack[-1]
        for _, left in reversed(self._stack[:-1]):
            digest = _node(left, digest)
        return digest.hex()


def merkle_root(leaves: Iterable[bytes]) -> tuple[str, int]:
    tree = MerkleRoot()
    for data in leaves:
        tree.add(data)
    return tree.hexdigest(), tree.count


# ------------------------------------------------------------------------- signing

def public_key_of(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def signed_text(position: int, accounts: int, merkle_root_hex: str, reason: str,
                period: str | None, created_at: str) -> bytes:
    return "\n".join([SIGNED_PREFIX, str(position), str(accounts), merkle_root_hex, reason,
                      period or "", created_at]).encode()


def sign_anchor(seed: bytes, *, position: int, accounts: int, merkle_root_hex: str,
                reason: Reason, period: str | None, now: datetime,
                group: str | None = None) -> LedgerAnchor:
    """`group`: the database group of LEDGER_DATABASES the log is, named in the anchor id
    (`anchor-g1-<position>-<reason>`) since each database has positions of its own and the
    ids are the Nats-Msg-Id of ledger.v1.anchors."""
    created_at = now.astimezone(UTC)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    signature = key.sign(signed_text(position, accounts, merkle_root_hex, reason, period,
                                     format_time(created_at)))
    return LedgerAnchor(
        anchor_id=f"anchor-{group + '-' if group else ''}{position}-{reason}",
        position=position, accounts=accounts,
        merkle_root=merkle_root_hex, reason=reason, period=period, created_at=created_at,
        public_key=base64.b64encode(public_key_of(seed)).decode(),
        signature=base64.b64encode(signature).decode(),
    )


def signature_holds(anchor: LedgerAnchor, public_key: bytes) -> bool:
    """Checked against the key the operator trusts, not the one the anchor carries."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            base64.b64decode(anchor.signature),
            signed_text(anchor.position, anchor.accounts, anchor.merkle_root, anchor.reason,
                        anchor.period, format_time(anchor.created_at)))
    except (InvalidSignature, ValueError):
        return False
    return True


# ------------------------------------------------------------------------- checking anchors

def anchors_to_check(anchors: Sequence[LedgerAnchor]) -> tuple[list[LedgerAnchor], int]:
    """The anchors `verify` checks, by position: every period close, and every anchor after
    the newest one. An older interval anchor adds nothing: whatever changed below it changed
    the chain heads at the period close after it too (a head's hash covers every event before
    it). Returns them and how many were left out."""
    ordered = sorted(anchors, key=lambda a: a.position)
    closes = [a.position for a in ordered if a.reason == "period_close"]
    last_close = closes[-1] if closes else -1
    chosen = [a for a in ordered if a.reason == "period_close" or a.position > last_close]
    return chosen, len(ordered) - len(chosen)


def problem_before_replay(anchor: LedgerAnchor, public_key: bytes,
                          log_position: int) -> str | None:
    """What is wrong with an anchor without reading the log: its signature, or a log that ends
    before it."""
    if not signature_holds(anchor, public_key):
        return "signature does not verify with the trusted anchor key"
    if log_position < anchor.position:
        return (f"the log ends at {log_position}, before the anchored position"
                f" {anchor.position}: it was truncated or restored from an older copy")
    return None


class AnchoredRoots:
    """Every anchor's Merkle root, recomputed from one pass over the log.

    The pass goes account by account in account-id order (the leaves' order) and each
    account's events in version order; for each anchored position the account's head is its
    highest version stored at or below that position, as `make_anchor` took it. Memory: a
    streaming tree per anchor, and per account a head per distinct anchor interval its events
    fall in.
    """

    def __init__(self, anchors: Sequence[LedgerAnchor]) -> None:
        self.anchors = sorted(anchors, key=lambda a: a.position)
        self.positions = [a.position for a in self.anchors]
        self.trees = [MerkleRoot() for _ in self.anchors]

    def account(self, account_id: UUID) -> AccountHeads:
        return AccountHeads(self, account_id)

    def problems(self) -> list[tuple[LedgerAnchor, str]]:
        found = []
        for anchor, tree in zip(self.anchors, self.trees, strict=True):
            root = tree.hexdigest()
            if root != anchor.merkle_root:
                found.append((anchor, f"chain heads at position {anchor.position} give root"
                                      f" {root} over {tree.count} accounts; the anchor signed"
                                      f" {anchor.merkle_root} over {anchor.accounts}: history"
                                      " below it was changed"))
        return found


class AccountHeads:
    """One account's heads at every anchored position, gathered as its events stream past."""

    __slots__ = ("_account_id", "_latest", "_roots")

    def __init__(self, roots: AnchoredRoots, account_id: UUID) -> None:
        self._roots = roots
        self._account_id = account_id
        # index of the first anchor at or after an event's position -> the highest version
        # seen there (events come in version order, so the latest seen is the highest)
        self._latest: dict[int, tuple[int, str]] = {}

    def see(self, position: int, version: int, chain_hash: str | None) -> None:
        if chain_hash is None:  # no link in a chain: not an account event
            return
        first = bisect.bisect_left(self._roots.positions, position)
        if first < len(self._roots.positions):
            self._latest[first] = (version, chain_hash)

    def finish(self) -> None:
        """The account's leaf into every anchor's tree where it had a head."""
        if not self._latest:
            return
        head: tuple[int, str] | None = None
        leaf = b""
        for index, tree in enumerate(self._roots.trees):
            seen = self._latest.get(index)
            # The head at an anchor: the highest version at or below it, whichever interval
            # it was stored in (a re-ordered log may put a later version in an earlier one).
            if seen is not None and (head is None or seen[0] > head[0]):
                head = seen
                leaf = leaf_bytes(self._account_id, head[0], head[1])
            if head is not None:
                tree.add(leaf)


def read_anchor_file(path: Path) -> list[LedgerAnchor]:
    decoder = msgspec.json.Decoder(LedgerAnchor)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


# ------------------------------------------------------------------------- making anchors

def _last_anchored(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(position), 0) FROM anchors").fetchone()
    return int(row[0]) if row else 0


def make_anchor(conn: psycopg.Connection[Any], seed: bytes, *, reason: Reason,
                period: str | None = None, now: datetime | None = None,
                group: str | None = None) -> LedgerAnchor | None:
    """Anchor the log as it is now; None when nothing was written since the last anchor
    (a manual or period-close anchor is made all the same).

    One transaction: the heads table moves forward by the events since the last anchor, the
    root is taken over it, and the anchor row is stored to be published.
    """
    now = now or datetime.now(UTC)
    with conn.transaction():
        conn.execute("LOCK TABLE anchors IN EXCLUSIVE MODE")  # one anchorer at a time
        position = log_head(conn)
        last = _last_anchored(conn)
        if position <= last and reason == "interval":
            return None
        if position > last:
            conn.execute(
                "INSERT INTO anchor_heads (account_id, originator_version, chain_hash) "
                + _HEADS_SINCE
                + " ON CONFLICT (account_id) DO UPDATE SET originator_version ="
                " excluded.originator_version, chain_hash = excluded.chain_hash",
                (last, position))
        tree = MerkleRoot()
        with conn.cursor(name="anchor_heads_scan") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT account_id, originator_version, chain_hash FROM anchor_heads"
                        " ORDER BY account_id")
            for account_id, version, chain_hash in cur:
                tree.add(leaf_bytes(account_id, int(version), chain_hash))
        anchor = sign_anchor(seed, position=position, accounts=tree.count,
                             merkle_root_hex=tree.hexdigest(), reason=reason, period=period,
                             now=now, group=group)
        inserted = conn.execute(
            "INSERT INTO anchors (anchor_id, position, body) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING", (anchor.anchor_id, position, msgspec.json.encode(anchor)))
        if inserted.rowcount == 0:
            return None  # this position is anchored already (a period close on a quiet log)
    log.info("anchor made", anchor_id=anchor.anchor_id, position=position,
             accounts=anchor.accounts, reason=reason)
    return anchor


def unpublished(conn: psycopg.Connection[Any]) -> list[LedgerAnchor]:
    rows = conn.execute("SELECT body FROM anchors WHERE published_at IS NULL ORDER BY position"
                        " LIMIT 100").fetchall()
    return [msgspec.json.decode(bytes(body), type=LedgerAnchor) for (body,) in rows]


def stored_anchors(conn: psycopg.Connection[Any]) -> list[LedgerAnchor]:
    """The database's copies of every anchor, oldest first (the archived file is the proof;
    these are what `verify` falls back to without it)."""
    rows = conn.execute("SELECT body FROM anchors ORDER BY position").fetchall()
    return [msgspec.json.decode(bytes(body), type=LedgerAnchor) for (body,) in rows]


def mark_published(conn: psycopg.Connection[Any], anchor_id: str) -> None:
    conn.execute("UPDATE anchors SET published_at = now() WHERE anchor_id = %s", (anchor_id,))


def append_to_file(directory: Path, anchor: LedgerAnchor) -> Path:
    """One line of JSON per anchor, in `anchors.jsonl` (an operator archives the file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "anchors.jsonl"
    with path.open("ab") as out:
        out.write(msgspec.json.encode(anchor) + b"\n")
    return path


def month_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def describe(anchor: LedgerAnchor) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(anchor))


class Anchorer:
    """The follower's task: an anchor every `interval_s` (when the log moved) and at the first
    moment of each calendar month (UTC) for the month that closed; each one stored, appended to
    the file, and published to ledger.v1.anchors with Nats-Msg-Id = anchor_id (a re-publish after
    a crash is dropped by JetStream's duplicate window, and the row stays until acknowledged)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], nc: Any, seed: bytes,
                 *, interval_s: float, directory: Path,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 group: str | None = None) -> None:
        self._connect = connect
        self._group = group
        self._nc = nc
        self._seed = seed
        self._interval_s = interval_s
        self._directory = directory
        self._clock = clock
        self._month = month_of(clock())
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="anchorer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)

    async def anchor_once(self) -> LedgerAnchor | None:
        now = self._clock()
        month = month_of(now)
        closing = month != self._month
        previous_month, self._month = self._month, month
        reason: Reason = "period_close" if closing else "interval"
        anchor = await asyncio.to_thread(self._make, reason, previous_month if closing else None)
        await self._publish_pending()
        return anchor

    def _make(self, reason: Reason, period: str | None) -> LedgerAnchor | None:
        with self._connect() as conn:
            anchor = make_anchor(conn, self._seed, reason=reason, period=period,
                                 now=self._clock(), group=self._group)
        if anchor is not None:
            append_to_file(self._directory, anchor)
        return anchor

    async def _publish_pending(self) -> None:
        pending = await asyncio.to_thread(self._pending)
        js = self._nc.jetstream()
        for anchor in pending:
            await js.publish(LEDGER_ANCHORS, msgspec.json.encode(anchor), timeout=5,
                             headers={"Nats-Msg-Id": anchor.anchor_id})
            await asyncio.to_thread(self._mark, anchor.anchor_id)

    def _pending(self) -> list[LedgerAnchor]:
        with self._connect() as conn:
            return unpublished(conn)

    def _mark(self, anchor_id: str) -> None:
        with self._connect() as conn:
            mark_published(conn, anchor_id)

    async def _run(self) -> None:
        backoff = Backoff(1.0, 60.0)
        while not self._stopping.is_set():
            try:
                await self.anchor_once()
                backoff.reset()
                wait_s = min(self._interval_s, _seconds_to_next_month(self._clock()) + 1)
            except Exception:
                wait_s = backoff.next_wait_s()
                log.exception("anchoring failed; will retry", wait_s=round(wait_s, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)


def _seconds_to_next_month(now: datetime) -> float:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first.replace(year=first.year + 1, month=1) if first.month == 12
                 else first.replace(month=first.month + 1))
    return max((following - now).total_seconds(), 0.0)
