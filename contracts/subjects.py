"""NATS subjects, JetStream streams, and the message shape on each subject.

Two rules shape the names. A request-reply subject must not fall under any stream's
wildcard, or JetStream answers the request with a PubAck instead of the ledger's reply;
so the authorize subject sits beside `ledger.v1.events.>`, not under it. Dead letters get
their own root, `deadletter.v1.`, so that a dead letter never lands back in the stream
(and in front of the consumer) it came from.
"""

from __future__ import annotations

from typing import Final

import msgspec

from contracts.catalog import PricesUpdated
from contracts.deadletter import DeadLetter
from contracts.invoicing import (
    CreditNoteIssued,
    CustomerUpdated,
    InvoiceIssued,
    InvoiceOverdue,
    InvoicePaid,
    InvoiceVoided,
    RecurringCharged,
    RecurringPastDue,
    RecurringResumed,
    RecurringSuspended,
)
from contracts.ledger import (
    AccountOverdrawn,
    AccountUpdated,
    AuthorizeReply,
    AuthorizeRequest,
    BalanceLow,
    EntryPosted,
    GrantsExpired,
    HoldExpired,
    LedgerAnchor,
)
from contracts.payments import PaymentFailed, PaymentReceived, PaymentRefunded
from contracts.usage import UsageRecorded

USAGE_RECORDED: Final = "usage.v1.recorded"
# Added in v1 (issue 12): the same message with the account in the subject, so that NATS can
# route it by account (contracts/partitioning.py). `usage.v1.recorded` keeps working.
USAGE_RECORDED_BY_ACCOUNT: Final = USAGE_RECORDED + ".{account_id}"
# The ledger's own: usage routed to partition p (usage.v1.part.<p>.<account_id>), read only by
# the owner of p. A publisher that knows the deployment's LEDGER_PARTITIONS may publish here
# directly (contracts.partitioning.partition_of) and save the forwarding hop.
USAGE_PARTITION_PREFIX: Final = "usage.v1.part."

LEDGER_AUTHORIZE: Final = "ledger.v1.authorize"
# Added in v1 (issue 12): the same request with the account in the subject.
LEDGER_AUTHORIZE_BY_ACCOUNT: Final = LEDGER_AUTHORIZE + ".{account_id}"
# The ledger's own: requests forwarded to the owner of partition p (the reply subject is the
# requester's, so the owner answers the requester directly). Not for publishers.
LEDGER_AUTHORIZE_PARTITION_PREFIX: Final = LEDGER_AUTHORIZE + ".part."
# The ledger's own: an account's HTTP commands forwarded to the owner of partition p
# (ledger_service/command_routing.py; msgpack, core NATS request-reply). Not for publishers.
LEDGER_COMMANDS_PARTITION_PREFIX: Final = "ledger.v1.commands.part."
LEDGER_EVENTS: Final = "ledger.v1.events."
LEDGER_ENTRY_POSTED: Final = LEDGER_EVENTS + "entry_posted"
LEDGER_BALANCE_LOW: Final = LEDGER_EVENTS + "balance_low"
LEDGER_ACCOUNT_OVERDRAWN: Final = LEDGER_EVENTS + "account_overdrawn"
LEDGER_GRANTS_EXPIRED: Final = LEDGER_EVENTS + "grants_expired"
LEDGER_HOLD_EXPIRED: Final = LEDGER_EVENTS + "hold_expired"
# Beside ledger.v1.events, in a stream of its own with its own retention (kept for years).
LEDGER_ANCHORS: Final = "ledger.v1.anchors"
LEDGER_ACCOUNT_UPDATED: Final = LEDGER_EVENTS + "account_updated"

PAYMENTS_RECEIVED: Final = "payments.v1.received"
PAYMENTS_REFUNDED: Final = "payments.v1.refunded"
PAYMENTS_FAILED: Final = "payments.v1.failed"

INVOICING_ISSUED: Final = "invoicing.v1.issued"
INVOICING_PAID: Final = "invoicing.v1.paid"
INVOICING_VOIDED: Final = "invoicing.v1.voided"
INVOICING_CREDIT_NOTE_ISSUED: Final = "invoicing.v1.credit_note_issued"
INVOICING_OVERDUE: Final = "invoicing.v1.overdue"
INVOICING_RECURRING_CHARGED: Final = "invoicing.v1.recurring.charged"
INVOICING_RECURRING_PAST_DUE: Final = "invoicing.v1.recurring.past_due"
INVOICING_RECURRING_SUSPENDED: Final = "invoicing.v1.recurring.suspended"
INVOICING_RECURRING_RESUMED: Final = "invoicing.v1.recurring.resumed"
INVOICING_CUSTOMER_UPDATED: Final = "invoicing.v1.customer_updated"

CATALOG_PRICES_UPDATED: Final = "catalog.v1.prices_updated"

DEADLETTER_PREFIX: Final = "deadletter.v1."
DEADLETTERS: Final = DEADLETTER_PREFIX + ">"

STREAMS: Final[dict[str, list[str]]] = {
    "USAGE": ["usage.v1.>"],
    "LEDGER": [LEDGER_EVENTS + ">"],
    "ANCHORS": [LEDGER_ANCHORS],
    "PAYMENTS": ["payments.v1.>"],
    "INVOICING": ["invoicing.v1.>"],
    "CATALOG": ["catalog.v1.>"],
    "DEADLETTER": [DEADLETTERS],
}

# The payload on each subject. Published events only; the authorize request and reply are in
# REQUESTS and REPLIES, and dead letters (any subject under DEADLETTERS) are DeadLetter.
EVENTS: Final[dict[str, type[msgspec.Struct]]] = {
    USAGE_RECORDED: UsageRecorded,
    LEDGER_ENTRY_POSTED: EntryPosted,
    LEDGER_BALANCE_LOW: BalanceLow,
    LEDGER_ACCOUNT_OVERDRAWN: AccountOverdrawn,
    LEDGER_GRANTS_EXPIRED: GrantsExpired,
    LEDGER_HOLD_EXPIRED: HoldExpired,
    LEDGER_ANCHORS: LedgerAnchor,
    LEDGER_ACCOUNT_UPDATED: AccountUpdated,
    PAYMENTS_RECEIVED: PaymentReceived,
    PAYMENTS_REFUNDED: PaymentRefunded,
    PAYMENTS_FAILED: PaymentFailed,
    INVOICING_ISSUED: InvoiceIssued,
    INVOICING_PAID: InvoicePaid,
    INVOICING_VOIDED: InvoiceVoided,
    INVOICING_CREDIT_NOTE_ISSUED: CreditNoteIssued,
    INVOICING_OVERDUE: InvoiceOverdue,
    INVOICING_RECURRING_CHARGED: RecurringCharged,
    INVOICING_RECURRING_PAST_DUE: RecurringPastDue,
    INVOICING_RECURRING_SUSPENDED: RecurringSuspended,
    INVOICING_RECURRING_RESUMED: RecurringResumed,
    INVOICING_CUSTOMER_UPDATED: CustomerUpdated,
    CATALOG_PRICES_UPDATED: PricesUpdated,
}
REQUESTS: Final[dict[str, type[msgspec.Struct]]] = {LEDGER_AUTHORIZE: AuthorizeRequest}
REPLIES: Final[dict[str, type[msgspec.Struct]]] = {LEDGER_AUTHORIZE: AuthorizeReply}

# Every subject a consumer may receive, with what to decode it as.
MESSAGES: Final[dict[str, type[msgspec.Struct]]] = {
    **EVENTS,
    **REQUESTS,
    DEADLETTERS: DeadLetter,
}

# The payload field whose value the publisher puts in the Nats-Msg-Id header. JetStream
# de-duplicates per stream, so within a stream these values must never coincide across
# subjects: a refund keyed by its payment id would be dropped as a repeat of the payment.
NATS_MSG_ID_FIELD: Final[dict[str, str]] = {
    USAGE_RECORDED: "event_id",
    LEDGER_ENTRY_POSTED: "entry_id",
    LEDGER_BALANCE_LOW: "event_id",
    LEDGER_ACCOUNT_OVERDRAWN: "event_id",
    LEDGER_GRANTS_EXPIRED: "event_id",
    LEDGER_HOLD_EXPIRED: "event_id",
    LEDGER_ANCHORS: "anchor_id",
    LEDGER_ACCOUNT_UPDATED: "event_id",
    PAYMENTS_RECEIVED: "payment_id",
    PAYMENTS_REFUNDED: "event_id",
    PAYMENTS_FAILED: "event_id",
    INVOICING_ISSUED: "event_id",
    INVOICING_PAID: "event_id",
    INVOICING_VOIDED: "event_id",
    INVOICING_CREDIT_NOTE_ISSUED: "event_id",
    INVOICING_OVERDUE: "event_id",
    INVOICING_RECURRING_CHARGED: "event_id",
    INVOICING_RECURRING_PAST_DUE: "event_id",
    INVOICING_RECURRING_SUSPENDED: "event_id",
    INVOICING_RECURRING_RESUMED: "event_id",
    INVOICING_CUSTOMER_UPDATED: "event_id",
    CATALOG_PRICES_UPDATED: "version",
    DEADLETTERS: "dead_letter_id",
}


# Subjects that carry the account id as their last token, by the subject they extend: the
# payload and the Nats-Msg-Id are those of the subject without the account.
BY_ACCOUNT: Final[dict[str, str]] = {
    USAGE_RECORDED: USAGE_RECORDED_BY_ACCOUNT,
    LEDGER_AUTHORIZE: LEDGER_AUTHORIZE_BY_ACCOUNT,
}


def by_account(subject: str, account_id: object) -> str:
    """`usage.v1.recorded.<account_id>` for USAGE_RECORDED; likewise LEDGER_AUTHORIZE."""
    return BY_ACCOUNT[subject].format(account_id=account_id)


def usage_partition_subject(partition: int, account_id: object) -> str:
    """`usage.v1.part.<partition>.<account_id>`: usage routed to its partition's owner."""
    return f"{USAGE_PARTITION_PREFIX}{partition}.{account_id}"


def usage_partition_filter(partition: int) -> str:
    return f"{USAGE_PARTITION_PREFIX}{partition}.*"


def authorize_partition_subject(partition: int) -> str:
    return f"{LEDGER_AUTHORIZE_PARTITION_PREFIX}{partition}"


def commands_partition_subject(partition: int) -> str:
    return f"{LEDGER_COMMANDS_PARTITION_PREFIX}{partition}"


def wildcard(template: str) -> str:
    """The NATS wildcard of a subject template: `{account_id}` becomes `*`."""
    return template.replace("{account_id}", "*")


def dead_letter_subject(subject: str) -> str:
    """Where a message that failed on `subject` is set aside."""
    return DEADLETTER_PREFIX + subject


def stream_of(subject: str) -> str | None:
    """The stream that stores `subject`, or None for a core NATS subject."""
    for name, patterns in STREAMS.items():
        if any(subject_matches(pattern, subject) for pattern in patterns):
            return name
    return None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is one token, a final `>` is one or more tokens."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for position, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > position
        if position >= len(tokens) or part not in ("*", tokens[position]):
            return False
    return len(tokens) == len(wanted)
