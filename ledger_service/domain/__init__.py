"""The ledger's pure domain model: the BillingAccount aggregate, its events and rules.

No I/O and no clock: every command takes `now` (tz-aware; stored as UTC). Imports nothing
from Litestar, FastStream, psycopg or NATS; eventsourcing's domain module only.

Modules: account (the aggregate and its events), usage (rating one batch of usage lines),
grants (consumption order, refund allocation and restoration), postings (ledger accounts,
zero-sum, replay), pricing (catalogue and overrides), chain (hash chain), values (inputs and
results), checks (input validation), errors, times (the one stored time format).

Decisions where the brief left room
-----------------------------------
Money and postings
- Signed integer micros. Sign convention is the customer's: positive on
  `customer:{id}:available` / `customer:{id}:held` is the customer's money; system accounts
  take the counter-postings (`system:cash:{provider}`, `system:cash:manual`,
  `system:revenue:usage`, `system:revenue:breakage`, `system:expense:promotion`,
  `system:adjustments`). Every event's postings, and every usage line's on its own, sum to
  zero. A postpay account's negative balance is the receivable (no separate account).
- balance = available + held (the customer postings). Holds do not consume grants; grants
  are consumed when the debit happens. Hence the invariant
  `sum(grant remaining) - deficit == balance`, and `available = balance - held - locked`,
  where `locked` is purchased credit on a trial account (trials spend promotional credit
  only) and 0 for every other type.

Grants
- Promotional kinds (signup_promo, mobile_verification, referral, bonus, compensation) are
  spent before paid kinds (purchased, adjustment, refund); then soonest expiry, no expiry last,
  then creation order. Trials may spend every kind except purchased.
- Trial -> prepay/postpay expires signup_promo, mobile_verification and referral grants (as the
  seed's AccountObserver does) in one GrantsExpired(reason="trial_converted"); bonus and
  compensation grants are operator gifts with their own expiry and survive. A deficit left by
  a trial stays until a credit covers it.
- Every credit (purchase, grant, credit adjustment, refund) covers an outstanding deficit
  first; only the rest becomes grant remainder. Grants used up are dropped from state.
- Commands that spend or restore credit (authorize, record_usage, debit adjust, refund,
  reverse_payment) expire grants past their expiry first, in the same command, so expired
  credit never funds anything; `expire_grants(now)` is the sweep for idle accounts. An
  authorization's floor check counts the expiry before recording anything, so a rejected
  authorization still records nothing.
- Expiry books the remainder to where it came from: promotional -> promotion expense,
  purchased/refund -> breakage revenue, adjustment -> adjustments.

Holds and usage
- One UsageRecorded event per account per batch; only billed and released lines are stored.
  Capture and the failure release of a hold are recorded in the usage line
  (hold_outcome "captured" | "released"), not as separate events; releases through
  release_hold are HoldReleased, timeouts one batched HoldsExpired per sweep.
- The hold id is the message identity: a billable line for a hold the account captured is
  ignored ("hold_already_captured"). The account remembers its 256 most recent captures
  (state must stay small); beyond that the app's processed-event-id table is the guard.
  A billable line whose hold was released or expired is billed without a hold (the message
  was sent), even past the floor.
- `failed` releases an open hold and bills nothing on either basis; a status the basis does
  not bill (delivered on submitted basis, submitted on delivered basis) leaves the hold open.
- System accounts are not billed: their holds are of zero, their usage is ignored (an open
  hold is released), they have no floor.
- Lines the model cannot read are "rejected" in the result (to dead-letter) while the rest of
  the batch applies; at most 5,000 lines per command.

Signals
- BalanceLow and Overdrawn (stored as AccountOverdrawn) are their own events, recorded at
  the end of any command that leaves available below the threshold / floor while the signal
  is armed. Each event's apply re-arms a signal once available is back at or above the
  threshold / floor, so each fires once per crossing, at most once per command (a batch). A
  threshold raised above the current available counts as a crossing. Threshold 0 disables
  BalanceLow; a freshly opened account below its threshold is not armed until it first
  reaches it.

Refunds and adjustments
- A refund is split over the original debit's parts in reverse: the overdraft part first, then
  grants in reverse consumption order. A part for a grant still held is restored to it; for a
  grant used up and dropped, not yet past its expiry, the grant is re-created under its id;
  for a grant past its expiry the part expires at once (booked to its expiry account), so a
  refund never revives lapsed credit. The overdraft part covers the current deficit, and any
  rest (the deficit was paid since) becomes a grant of kind `refund`.
- Adjustment credit is a grant of kind `adjustment`, spent last with purchased credit; a debit
  adjustment consumes grants like usage and may overdraw. Adjustments, credits and refunds
  are allowed on a closed account so it can be settled; usage and authorizations are not.
- `reverse_payment` (payments.v1.refunded) takes from that payment's grant, then other paid
  credit, never promotional credit, and may overdraw.

State and snapshots
- State is JSON primitives only, so eventsourcing's default transcoder snapshots it, and holds
  no per-line history: settings, grants with something left, open holds, price overrides,
  the refunded total of each refunded entry, and the last 256 captured hold ids. Its size
  follows open holds and refunded entries, not the event count.
- A rejected command raises before its first event. Commands that find nothing to do
  (expire with nothing due, a setting set to its value, closing a closed account, refunding
  a fully refunded entry) record nothing and say so in their return value.
- EntryNotFound is for the app layer (the refunded entry id is not in the statement); the
  aggregate trusts the DebitRef it is given but checks that its parts add up.

Identity and tamper evidence
- Usage entry ids are uuid5(account_id, event_id); other entries uuid5(account_id,
  "\\0kind\\0key"), which no printable producer key can collide with.
- chain_hash: see chain.py. Times in payloads and state use times.format_time, one
  fixed-width UTC form, so hashes survive the store's round-trip and strings compare as times.
- The tenant of an account is the account itself (CONTRACTS: tenant_id is the account id), so
  the aggregate carries no separate tenant field.
"""

from ledger_service.domain.account import BillingAccount, debit_refs_of
from ledger_service.domain.chain import (
    GENESIS_HASH,
    ChainBreak,
    compute_chain_hash,
    event_payload,
    verify_chain,
)
from ledger_service.domain.errors import (
    AccountClosed,
    CreditLimitExceeded,
    CurrencyMismatch,
    DuplicateKey,
    EntryNotFound,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
    InvalidMemo,
    InvalidRequest,
    InvalidSetting,
    InvalidTransition,
    LedgerError,
    RefundExceedsDebit,
    UnknownProduct,
)
from ledger_service.domain.postings import (
    event_postings,
    replay_postings,
    replay_postings_by_currency,
    sum_by_currency,
)
from ledger_service.domain.pricing import PriceCatalog, load_default_catalog
from ledger_service.domain.values import (
    AccountSettings,
    DebitRef,
    EntryResult,
    GrantView,
    HoldResult,
    HoldView,
    LineOutcome,
    RefundResult,
    TaxProfile,
    UsageLine,
    UsageResult,
)

__all__ = [
    "GENESIS_HASH",
    "AccountClosed",
    "AccountSettings",
    "BillingAccount",
    "ChainBreak",
    "CreditLimitExceeded",
    "CurrencyMismatch",
    "DebitRef",
    "DuplicateKey",
    "EntryNotFound",
    "EntryResult",
    "GrantView",
    "HoldNotFound",
    "HoldResult",
    "HoldView",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidMemo",
    "InvalidRequest",
    "InvalidSetting",
    "InvalidTransition",
    "LedgerError",
    "LineOutcome",
    "PriceCatalog",
    "RefundExceedsDebit",
    "RefundResult",
    "TaxProfile",
    "UnknownProduct",
    "UsageLine",
    "UsageResult",
    "compute_chain_hash",
    "debit_refs_of",
    "event_payload",
    "event_postings",
    "load_default_catalog",
    "replay_postings",
    "replay_postings_by_currency",
    "sum_by_currency",
    "verify_chain",
]
