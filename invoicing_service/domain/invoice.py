"""The invoice aggregate: draft -> open (issued) -> paid | overdue -> paid | void.

An issued invoice never changes what it bills: payments, credit notes, the overdue mark and
a void are events beside it. Commands check a named invariant, then record one event.

Event payloads are typed (Line is a frozen dataclass with its own transcoding) and carry
`class_version` 1; a later change of a payload adds an upcast, never edits a stored event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, cast
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from invoicing_service.domain import errors
from invoicing_service.domain.lines import LINES_MAX, Line, VatGroup, breakdown, credit_lines

Status = Literal["draft", "open", "paid", "overdue", "void"]
Kind = Literal["usage", "receipt"]
PAYMENTS_REMEMBERED_MAX: Final = 10_000
CREDIT_NOTE_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://billing.example/invoicing/credit-notes")


def credit_note_id_for(invoice_id: UUID, key: str) -> str:
    """A credit note's id from its invoice and its idempotency key: a retried request
    finds the same credit note."""
    return str(uuid5(CREDIT_NOTE_NAMESPACE, f"{invoice_id}:{key}"))


class Invoice(Aggregate):
    """One invoice (or a paid top-up receipt) of one account in one currency."""

    if TYPE_CHECKING:
        _account_id: str
        _currency: str
        _period: str | None
        _kind: Kind
        _lines: tuple[Line, ...]
        _billing_run_id: str | None
        _net_terms_days: int
        _status: Status
        _number: str | None
        _issued_at: datetime | None
        _due_at: datetime | None
        _paid_at: datetime | None
        _voided_at: datetime | None
        _void_reason: str | None
        _paid_micros: int
        _payments: dict[str, int]
        _credit_notes: list[CreditNote]
        _overdue_marked: bool

    class Event(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            self.apply_to(cast("Invoice", aggregate))

        def apply_to(self, invoice: Invoice) -> None:
            """What the event changes."""

    class Drafted(Event, Aggregate.Created):
        account_id: str
        currency: str
        period: str | None
        kind: str
        lines: tuple[Line, ...]
        billing_run_id: str | None
        net_terms_days: int

        def apply_to(self, invoice: Invoice) -> None:
            invoice._account_id = self.account_id
            invoice._currency = self.currency
            invoice._period = self.period
            invoice._kind = cast("Kind", self.kind)
            invoice._lines = tuple(self.lines)
            invoice._billing_run_id = self.billing_run_id
            invoice._net_terms_days = self.net_terms_days
            invoice._status = "draft"
            invoice._number = None
            invoice._issued_at = invoice._due_at = invoice._paid_at = None
            invoice._voided_at = None
            invoice._void_reason = None
            invoice._paid_micros = 0
            invoice._payments = {}
            invoice._credit_notes = []
            invoice._overdue_marked = False

    class Issued(Event):
        number: str
        issued_at: datetime
        due_at: datetime

        def apply_to(self, invoice: Invoice) -> None:
            invoice._number = self.number
            invoice._issued_at = self.issued_at
            invoice._due_at = self.due_at
            invoice._status = "open"
            invoice._settle_if_nothing_due(self.issued_at)

    class PaymentApplied(Event):
        payment_id: str
        amount_micros: int
        received_at: datetime

        def apply_to(self, invoice: Invoice) -> None:
            invoice._payments[self.payment_id] = self.amount_micros
            invoice._paid_micros += self.amount_micros
            invoice._settle_if_nothing_due(self.received_at)

    class BecameOverdue(Event):
        at: datetime

        def apply_to(self, invoice: Invoice) -> None:
            invoice._status = "overdue"
            invoice._overdue_marked = True

    class Voided(Event):
        reason: str
        at: datetime

        def apply_to(self, invoice: Invoice) -> None:
            invoice._status = "void"
            invoice._voided_at = self.at
            invoice._void_reason = self.reason

    class Credited(Event):
        credit_note_id: str
        number: str
        reason: str
        lines: tuple[Line, ...]
        at: datetime

        def apply_to(self, invoice: Invoice) -> None:
            invoice._credit_notes.append(CreditNote(
                credit_note_id=self.credit_note_id, number=self.number, reason=self.reason,
                lines=tuple(self.lines), issued_at=self.at))
            invoice._settle_if_nothing_due(self.at)

    # ------------------------------------------------------------------ commands

    @classmethod
    def draft(cls, invoice_id: UUID, *, account_id: str, currency: str, period: str | None,
              lines: Sequence[Line], now: datetime, kind: Kind = "usage",
              billing_run_id: str | None = None, net_terms_days: int = 30) -> Invoice:
        if not lines:
            raise errors.InvoiceNotIssuable("an invoice bills at least one line")
        if len(lines) > LINES_MAX:
            raise errors.InvoiceNotIssuable(f"an invoice has at most {LINES_MAX} lines")
        if any(line.net_micros < 0 or line.vat_micros < 0 for line in lines):
            raise errors.InvoiceNotIssuable("lines bill non-negative amounts")
        if not 0 <= net_terms_days <= 365:
            raise errors.InvalidRequest("net terms are 0 to 365 days")
        return cls._create(cls.Drafted, id=invoice_id, timestamp=now, account_id=account_id,
                           currency=currency, period=period, kind=kind, lines=tuple(lines),
                           billing_run_id=billing_run_id, net_terms_days=net_terms_days)

    def issue(self, number: str, now: datetime) -> None:
        self.check_is_draft()
        self.trigger_event(self.Issued, timestamp=now, number=number, issued_at=now,
                           due_at=now + timedelta(days=self._net_terms_days))

    def pay(self, payment_id: str, amount_micros: int, now: datetime) -> bool:
        """Apply a payment (VAT included); False when this payment was already applied."""
        if payment_id in self._payments:
            return False
        self.check_is_payable()
        if amount_micros <= 0:
            raise errors.InvalidRequest("a payment is a positive amount")
        self.trigger_event(self.PaymentApplied, timestamp=now, payment_id=payment_id,
                           amount_micros=amount_micros, received_at=now)
        return True

    def mark_overdue(self, now: datetime) -> bool:
        """Once per invoice, when it is open and past its due date unpaid."""
        if self._status != "open" or self._overdue_marked or self._due_at is None \
                or now <= self._due_at or self.amount_due_micros == 0:
            return False
        self.trigger_event(self.BecameOverdue, timestamp=now, at=now)
        return True

    def void(self, reason: str, now: datetime) -> None:
        self.check_is_voidable()
        self.trigger_event(self.Voided, timestamp=now, reason=reason, at=now)

    def credit(self, credit_note_id: str, number: str, net_micros: int | None, reason: str,
               now: datetime) -> CreditNote:
        self.check_is_creditable(net_micros)
        lines = credit_lines(self._lines, self.credited_lines, net_micros, reason)
        self.trigger_event(self.Credited, timestamp=now, credit_note_id=credit_note_id,
                           number=number, reason=reason, lines=tuple(lines), at=now)
        return self._credit_notes[-1]

    # ---------------------------------------------------------------- invariants

    def check_is_draft(self) -> None:
        if self._status != "draft":
            raise errors.InvoiceNotIssuable(f"invoice {self.id} is {self._status}, not draft")

    def check_is_payable(self) -> None:
        if self._status in ("draft", "void"):
            raise errors.InvoiceNotPayable(f"invoice {self.id} is {self._status}: it takes no payment")

    def check_is_voidable(self) -> None:
        if self._status not in ("open", "overdue"):
            raise errors.InvoiceNotVoidable(f"invoice {self.id} is {self._status}: only an "
                                            "open or overdue invoice is voided")
        if self._paid_micros > 0:
            raise errors.InvoiceNotVoidable(f"invoice {self.id} has payments: credit it instead")

    def check_is_creditable(self, net_micros: int | None) -> None:
        if self._status in ("draft", "void"):
            raise errors.InvoiceNotCreditable(f"invoice {self.id} is {self._status}: it takes "
                                              "no credit note")
        left = self.creditable_net_micros
        if left <= 0 and self.subtotal_micros + self.vat_total_micros - self.credited_total_micros <= 0:
            raise errors.CreditExceedsInvoice(f"nothing is left to credit on invoice {self.id}")
        if net_micros is not None:
            if net_micros <= 0 or net_micros % 10_000:
                raise errors.InvalidRequest("a credit is a positive amount in whole minor units")
            if net_micros > left:
                raise errors.CreditExceedsInvoice(
                    f"credit of {net_micros} exceeds the {left} left on invoice {self.id}")

    def _settle_if_nothing_due(self, now: datetime) -> None:
        if self._status in ("open", "overdue") and self.amount_due_micros == 0:
            self._status = "paid"
            self._paid_at = now

    # ------------------------------------------------------------------- queries

    @property
    def account_id(self) -> str:
        return self._account_id

    @property
    def currency(self) -> str:
        return self._currency

    @property
    def period(self) -> str | None:
        return self._period

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def billing_run_id(self) -> str | None:
        return self._billing_run_id

    @property
    def status(self) -> Status:
        return self._status

    @property
    def number(self) -> str | None:
        return self._number

    @property
    def lines(self) -> tuple[Line, ...]:
        return self._lines

    @property
    def vat_breakdown(self) -> list[VatGroup]:
        return breakdown(self._lines)

    @property
    def issued_at(self) -> datetime | None:
        return self._issued_at

    @property
    def due_at(self) -> datetime | None:
        return self._due_at

    @property
    def paid_at(self) -> datetime | None:
        return self._paid_at

    @property
    def voided_at(self) -> datetime | None:
        return self._voided_at

    @property
    def void_reason(self) -> str | None:
        return self._void_reason

    @property
    def subtotal_micros(self) -> int:
        return sum(line.net_micros for line in self._lines)

    @property
    def vat_total_micros(self) -> int:
        return sum(line.vat_micros for line in self._lines)

    @property
    def total_micros(self) -> int:
        return self.subtotal_micros + self.vat_total_micros

    @property
    def paid_micros(self) -> int:
        return self._paid_micros

    @property
    def credit_notes(self) -> list[CreditNote]:
        return list(self._credit_notes)

    @property
    def credited_lines(self) -> list[Line]:
        return [line for note in self._credit_notes for line in note.lines]

    @property
    def credited_total_micros(self) -> int:
        return sum(note.total_micros for note in self._credit_notes)

    @property
    def creditable_net_micros(self) -> int:
        return self.subtotal_micros - sum(line.net_micros for line in self.credited_lines)

    @property
    def amount_due_micros(self) -> int:
        if self._status in ("draft", "void"):
            return 0
        return max(0, self.total_micros - self._paid_micros - self.credited_total_micros)


class CreditNote:
    """A credit note as the invoice holds it."""

    __slots__ = ("credit_note_id", "issued_at", "lines", "number", "reason")

    def __init__(self, *, credit_note_id: str, number: str, reason: str,
                 lines: tuple[Line, ...], issued_at: datetime) -> None:
        self.credit_note_id = credit_note_id
        self.number = number
        self.reason = reason
        self.lines = lines
        self.issued_at = issued_at

    @property
    def subtotal_micros(self) -> int:
        return sum(line.net_micros for line in self.lines)

    @property
    def vat_total_micros(self) -> int:
        return sum(line.vat_micros for line in self.lines)

    @property
    def total_micros(self) -> int:
        return self.subtotal_micros + self.vat_total_micros
