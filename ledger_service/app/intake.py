"""Usage intake and authorization: many messages, one transaction.

A batch of usage messages is grouped by account; each account's lines become ONE stored event
(the domain's record_usage), all accounts commit together with one idempotency key per
message, and only then does the caller ack the messages. Authorization requests that arrive
together are approved or refused together and their holds commit in one transaction too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

import msgspec
import structlog

from contracts.ledger import AuthorizeReply, AuthorizeRequest
from contracts.money import format_micros
from contracts.usage import UsageRecorded
from ledger_service.app.ledger import AccountNotFound, Ledger, UnitOfWork, hold_id_for
from ledger_service.app.recorder import IdempotencyRow
from ledger_service.domain.account import BillingAccount
from ledger_service.domain.checks import USAGE_LINES_PER_COMMAND_MAX
from ledger_service.domain.errors import (
    AccountClosed,
    CreditLimitExceeded,
    InsufficientFunds,
    LedgerError,
    UnknownProduct,
)
from ledger_service.domain.pricing import PriceCatalog
from ledger_service.domain.values import HoldResult, UsageLine

log = structlog.get_logger(__name__)

USAGE_SCOPE = "usage"
AUTHORIZE_SCOPE = "authorize"
HOLD_TTL_S_DEFAULT = 300

Outcome = Literal["applied", "duplicate", "dead"]


@dataclass(frozen=True, slots=True)
class UsageVerdict:
    outcome: Outcome
    reason: str | None = None  # dead letters: "rejected"
    detail: str | None = None


def apply_usage(ledger: Ledger, batch: Sequence[UsageRecorded]) -> list[UsageVerdict]:
    """Apply a batch of decoded usage messages; one verdict per message, in order."""
    return ledger.run(lambda work: _apply_usage(ledger, work, batch))


def _apply_usage(ledger: Ledger, work: UnitOfWork, batch: Sequence[UsageRecorded]) -> list[UsageVerdict]:
    verdicts: list[UsageVerdict | None] = [None] * len(batch)
    seen = ledger.seen_keys(USAGE_SCOPE, [m.event_id for m in batch])
    by_account: dict[UUID, list[int]] = defaultdict(list)
    first_index: dict[str, int] = {}
    for index, message in enumerate(batch):
        if message.event_id in seen or message.event_id in first_index:
            verdicts[index] = UsageVerdict("duplicate")
            continue
        first_index[message.event_id] = index
        by_account[message.account_id].append(index)
    now = ledger.clock()
    for account_id, indexes in by_account.items():
        try:
            account = ledger.load(account_id)
        except AccountNotFound as exc:
            for index in indexes:
                verdicts[index] = UsageVerdict("dead", "rejected", str(exc))
            continue
        for start in range(0, len(indexes), USAGE_LINES_PER_COMMAND_MAX):
            chunk = indexes[start:start + USAGE_LINES_PER_COMMAND_MAX]
            _apply_account(ledger, work, account, [batch[i] for i in chunk], chunk, verdicts, now)
    return [v if v is not None else UsageVerdict("dead", "rejected", "not processed")
            for v in verdicts]


def _apply_account(
    ledger: Ledger,
    work: UnitOfWork,
    account: BillingAccount,
    messages: list[UsageRecorded],
    indexes: list[int],
    verdicts: list[UsageVerdict | None],
    now: object,
) -> None:
    catalogue = ledger.catalogue()
    lines: list[UsageLine] = []
    line_index: dict[str, int] = {}
    for message, index in zip(messages, indexes, strict=True):
        try:
            price = account.unit_price_for(message.product, catalogue)
        except UnknownProduct as exc:
            verdicts[index] = UsageVerdict("dead", "rejected", str(exc))
            continue
        lines.append(UsageLine(
            event_id=message.event_id, product=message.product, quantity=message.quantity,
            unit_price_micros=price, status=message.status, occurred_at=message.occurred_at,
            hold_id=message.hold_id, reference=message.reference,
        ))
        line_index[message.event_id] = index
    if not lines:
        return
    try:
        result = account.record_usage(lines, now)  # type: ignore[arg-type]
    except LedgerError as exc:  # AccountClosed and the like: the whole chunk is refused
        for index in line_index.values():
            verdicts[index] = UsageVerdict("dead", "rejected", f"{type(exc).__name__}: {exc}")
        return
    for outcome in result.lines:
        index = line_index[outcome.event_id]
        if outcome.outcome == "rejected":
            verdicts[index] = UsageVerdict("dead", "rejected", outcome.reason)
            continue
        verdicts[index] = UsageVerdict("applied")
        work.rows.keys.append(IdempotencyRow(USAGE_SCOPE, outcome.event_id, account.id))
    if account.pending_events:
        work.touch(account)


_REFUSALS: tuple[tuple[type[LedgerError], str], ...] = (
    (InsufficientFunds, "insufficient_funds"),
    (CreditLimitExceeded, "credit_limit_exceeded"),
    (AccountClosed, "account_closed"),
    (UnknownProduct, "unknown_product"),
    (AccountNotFound, "account_not_found"),
    (LedgerError, "invalid_request"),
)
_reply_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(AuthorizeReply)


def refusal(exc: LedgerError) -> AuthorizeReply:
    for error_type, reason in _REFUSALS:
        if isinstance(exc, error_type):
            return AuthorizeReply(approved=False, reason=reason, detail=str(exc)[:500])  # type: ignore[arg-type]
    raise AssertionError("LedgerError is the last refusal")


def authorize(ledger: Ledger, requests: Sequence[AuthorizeRequest]) -> list[AuthorizeReply]:
    """Approve or refuse each request; the same request_id always gets the same reply.

    Optimistic about repeats: a reply's key commits with its hold, so a request_id already
    answered (by this process or another) makes the insert fail and the batch is retried,
    and only then are stored replies looked up. New requests, nearly all of them, cost no
    look-up; a repeat to this process is answered from its memory of recent replies.
    """
    attempts = 0

    def command(work: UnitOfWork) -> list[AuthorizeReply]:
        nonlocal attempts
        attempts += 1
        return _authorize(ledger, work, requests, look_up_stored=attempts > 1)

    replies: list[AuthorizeReply] = ledger.run(command)
    recent = ledger.recent_replies
    for request, reply in zip(requests, replies, strict=True):
        # Encoded: 100,000 bytes values cost the garbage collector nothing to walk, where
        # as many reply objects made each full collection tens of milliseconds longer.
        recent[request.request_id] = _reply_encoder.encode(reply)
    while len(recent) > RECENT_REPLIES_MAX:
        del recent[next(iter(recent))]
    return replies


RECENT_REPLIES_MAX = 100_000


def _authorize(ledger: Ledger, work: UnitOfWork, requests: Sequence[AuthorizeRequest],
               *, look_up_stored: bool) -> list[AuthorizeReply]:
    request_ids = [r.request_id for r in requests]
    recent = ledger.recent_replies
    stored = {rid: _reply_decoder.decode(recent[rid]) for rid in request_ids if rid in recent}
    if look_up_stored:
        stored.update(_stored_replies(ledger, request_ids))
    replies: list[AuthorizeReply] = []
    now = ledger.clock()
    catalogue = ledger.catalogue()
    for request in requests:
        if request.request_id in stored:
            replies.append(stored[request.request_id])
            continue
        try:
            account = work.accounts.get(request.account_id) or ledger.load(request.account_id)
            try:
                hold = _place_hold(account, request, catalogue, now)
            except LedgerError:
                # Decided again on the stored account before a refusal from a stale cache
                # becomes the request's stored answer (Ledger.behind).
                if account.id in work.accounts or not ledger.behind(account):
                    raise
                account = ledger.reloaded(account.id)
                hold = _place_hold(account, request, catalogue, now)
        except LedgerError as exc:
            reply = refusal(exc)
        else:
            work.touch(account)
            reply = AuthorizeReply(
                approved=True, hold_id=hold.hold_id, amount=format_micros(hold.amount_micros),
                currency=account.currency,  # type: ignore[arg-type]
                available_after=format_micros(hold.available_after_micros),
                expires_at=datetime.fromisoformat(hold.expires_at),
            )
        stored[request.request_id] = reply
        work.rows.keys.append(IdempotencyRow(
            AUTHORIZE_SCOPE, request.request_id, request.account_id,
            response=_reply_encoder.encode(reply),
        ))
        replies.append(reply)
    return replies


def _place_hold(account: BillingAccount, request: AuthorizeRequest, catalogue: PriceCatalog,
                now: datetime) -> HoldResult:
    price = account.unit_price_for(request.product, catalogue)
    ttl_s = request.ttl_seconds or HOLD_TTL_S_DEFAULT
    return account.authorize(
        hold_id_for(account.id, request.request_id), request.request_id,
        request.product, request.quantity, price, now + timedelta(seconds=ttl_s), now,
    )


def _stored_replies(ledger: Ledger, request_ids: list[str]) -> dict[str, AuthorizeReply]:
    rows = ledger.query(
        # One primary-key probe per key, whatever the statistics say of the scope (with keys
        # of one scope dominating, `scope = %s AND key = ANY(%s)` was planned as a scan of
        # the scope filtered by key: 33 ms per look-up, found by bench/asof_reads.py).
        "SELECT k.key, k.response FROM unnest(%s::text[]) AS wanted(key)"
        " JOIN {schema}.idempotency_keys k ON k.scope = %s AND k.key = wanted.key",
        (request_ids, AUTHORIZE_SCOPE),
    )
    return {key: _reply_decoder.decode(bytes(response)) for key, response in rows}
