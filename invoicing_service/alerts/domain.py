"""Account alerts: which event becomes which email, to whom, and when one is held back.
Pure: the app passes the settings, the last alert's time and `now`.

- `balance_low` (ledger.v1.events.balance_low): the ledger publishes it once per crossing
  below the account's threshold, and an email is sent once per event (its id is the email's
  idempotency key). A flapping balance may cross many times in an hour: a second low-balance
  email within ALERT_MIN_INTERVAL_S of the last one is not sent.
- `renewal_past_due`, `renewal_suspended` (invoicing.v1.recurring.*) and `invoice_overdue`
  (invoicing.v1.overdue): once per event; each names one item or invoice, so none is held
  back by the interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal
from uuid import UUID

AlertKind = Literal["balance_low", "renewal_past_due", "renewal_suspended", "invoice_overdue"]
ALERT_KINDS: Final[tuple[AlertKind, ...]] = (
    "balance_low", "renewal_past_due", "renewal_suspended", "invoice_overdue")
# Kinds that the minimum interval applies to (see the module's docstring).
RATE_LIMITED: Final = frozenset({"balance_low"})
RECIPIENTS_MAX: Final = 20


@dataclass(frozen=True, slots=True)
class Preferences:
    """An account's notification settings (defaults: every alert on, no addresses)."""

    enabled: frozenset[str] = frozenset(ALERT_KINDS)
    billing_email: str | None = None
    extra_recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    account_id: UUID
    source_event_id: str
    subject: str
    text_body: str

    @property
    def email_key(self) -> str:
        return f"alert:{self.kind}:{self.source_event_id}"[:200]


def recipients(billing_email: str | None, extra: tuple[str, ...]) -> tuple[str, ...]:
    """The billing email first, then the extra recipients, each once, at most 20."""
    seen: dict[str, None] = {}
    for address in (billing_email, *extra):
        if address and address.lower() not in {a.lower() for a in seen}:
            seen[address] = None
    return tuple(seen)[:RECIPIENTS_MAX]


def held_back(kind: str, last_sent_at: datetime | None, now: datetime,
              min_interval: timedelta) -> bool:
    return (kind in RATE_LIMITED and last_sent_at is not None
            and now - last_sent_at < min_interval)


def balance_low_alert(account_id: UUID, event_id: str, available: str, threshold: str,
                      currency: str) -> Alert:
    return Alert(
        kind="balance_low", account_id=account_id, source_event_id=event_id,
        subject=f"Your balance is low: {currency} {available} available",
        text_body=(
            f"The available balance of account {account_id} is {currency} {available},"
            f" below your alert threshold of {currency} {threshold}.\n\n"
            "Top up to keep your messages, numbers and keywords running.\n"),
    )


def past_due_alert(account_id: UUID, event_id: str, product: str, reference: str,
                   period: str, suspend_after: datetime) -> Alert:
    return Alert(
        kind="renewal_past_due", account_id=account_id, source_event_id=event_id,
        subject=f"Renewal of {reference} could not be charged",
        text_body=(
            f"The {_what(product)} {reference} could not be renewed for {period}: the"
            f" balance of account {account_id} does not cover it.\n\n"
            "We try again when you top up, and daily. Unless it is paid by"
            f" {suspend_after:%d %B %Y %H:%M} UTC, {reference} will be suspended.\n"),
    )


def suspended_alert(account_id: UUID, event_id: str, product: str, reference: str) -> Alert:
    return Alert(
        kind="renewal_suspended", account_id=account_id, source_event_id=event_id,
        subject=f"{reference} is suspended",
        text_body=(
            f"The {_what(product)} {reference} of account {account_id} is suspended: its"
            " renewal stayed unpaid past the grace period.\n\n"
            "Top up: it resumes as soon as the missed renewals are charged.\n"),
    )


def overdue_alert(account_id: UUID, event_id: str, number: str, amount_due: str,
                  currency: str, due_at: datetime) -> Alert:
    return Alert(
        kind="invoice_overdue", account_id=account_id, source_event_id=event_id,
        subject=f"Invoice {number} is overdue",
        text_body=(
            f"Invoice {number} of account {account_id} was due on {due_at:%d %B %Y}."
            f" {currency} {amount_due} is still owed.\n"),
    )


def _what(product: str) -> str:
    return {"vmn": "number", "shortcode_keyword": "keyword"}.get(product, product)
