"""Use cases of invoices over the event store: issue, pay, void, credit, mark overdue.

Synchronous (eventsourcing is); the async layers call them in a worker thread. Each use case
loads, calls the domain, and saves with the side rows of that save (store.py). A save that
fails on a uniqueness rule (another process saved the same invoice first, or took the number
this one expected) is retried from a fresh load: the number is then the next one, so numbers
stay gap-free and unique under concurrency.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar
from uuid import UUID, uuid4

import msgspec
import structlog
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from psycopg.sql import SQL, Identifier

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.subjects import (
    INVOICING_CREDIT_NOTE_ISSUED,
    INVOICING_ISSUED,
    INVOICING_OVERDUE,
    INVOICING_PAID,
    INVOICING_VOIDED,
)
from invoicing_service.app import views
from invoicing_service.app.store import (
    CreditNoteRecord,
    EmailRequest,
    InvoiceRecord,
    InvoicingApplication,
    InvoicingRows,
    KeyRow,
    NumberClaim,
    UsageWatermark,
)
from invoicing_service.domain import errors
from invoicing_service.domain.invoice import Invoice, Kind, credit_note_id_for
from invoicing_service.domain.lines import Line
from invoicing_service.domain.numbering import SeriesKind, document_number, series_of

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS_MAX = 20
# Invoices issued in one transaction: a billing run's page at most.
ISSUE_BATCH_MAX = 1_000
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(*parts: object) -> str:
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()


@dataclass(frozen=True, slots=True)
class InvoiceOrder:
    """An invoice to issue now: everything the draft needs, and the usage it bills."""

    invoice_id: UUID
    account_id: UUID
    currency: str
    period: str | None
    lines: Sequence[Line]
    kind: Kind = "usage"
    billing_run_id: str | None = None
    net_terms_days: int = 30
    billed_usage: Sequence[UUID] = field(default_factory=tuple)
    # A billing run's invoice: the watermark of the usage it bills (instead of marking lines).
    billed_through: UsageWatermark | None = None
    # A receipt is issued paid: the payment that paid it.
    payment_id: str | None = None
    payment_micros: int = 0


PaymentOutcome = Literal["applied", "duplicate", "not_found"]


class Invoices:
    def __init__(self, app: InvoicingApplication | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._app = app
        self.clock = clock

    @property
    def app(self) -> InvoicingApplication:
        if self._app is None:
            raise RuntimeError("the invoicing event store is not open yet")
        return self._app

    def attach(self, app: InvoicingApplication) -> None:
        """The event store, opened at start-up once the migrations have run."""
        self._app = app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()

    # ------------------------------------------------------------------ issuing

    def issue(self, order: InvoiceOrder) -> Invoice:
        """Draft and issue in one save; an invoice id already issued returns that invoice."""
        self.issue_batch([order])
        invoice = self.find(order.invoice_id)
        assert invoice is not None
        return invoice

    def issue_batch(self, orders: Sequence[InvoiceOrder]) -> list[Invoice]:
        """Draft and issue many invoices in one transaction with consecutive numbers (a
        billing run's page). Orders whose invoice exists already are skipped; returns the
        invoices issued now."""
        assert len(orders) <= ISSUE_BATCH_MAX, "one transaction holds a bounded batch"

        def attempt() -> list[Invoice]:
            issued = self.app.issued_among([order.invoice_id for order in orders])
            todo = [order for order in orders if order.invoice_id not in issued]
            if not todo:
                return []
            now = self.clock()
            series = series_of("INV", now)
            first = self.app.next_sequence(series)
            rows = InvoicingRows(number=NumberClaim(series, first, len(todo)))
            invoices = [self._issued(order, document_number(series, first + n), now, rows)
                        for n, order in enumerate(todo)]
            self.app.save(*invoices, invoicing_rows=rows)
            return invoices

        return self._retrying(attempt)

    @staticmethod
    def _issued(order: InvoiceOrder, number: str, now: datetime,
                rows: InvoicingRows) -> Invoice:
        invoice = Invoice.draft(order.invoice_id, account_id=str(order.account_id),
                                currency=order.currency, period=order.period, lines=order.lines,
                                now=now, kind=order.kind, billing_run_id=order.billing_run_id,
                                net_terms_days=order.net_terms_days)
        invoice.issue(number, now)
        rows.billed_usage.extend((entry, invoice.id) for entry in order.billed_usage)
        if order.billed_through is not None:
            rows.watermarks.append((invoice.id, order.account_id, order.currency,
                                    order.billed_through))
        view: InvoiceView | None
        view, issued = views.issued_views(invoice)
        rows.outbox.append((INVOICING_ISSUED, issued))
        if order.payment_id is not None:
            invoice.pay(order.payment_id, order.payment_micros, now)
            rows.keys.append(KeyRow("payment", order.payment_id))
            view = None  # paid since: the read model's view is built from the invoice
        if invoice.status == "paid":
            rows.outbox.append((INVOICING_PAID, views.paid_message(invoice, order.payment_id)))
        rows.invoices.append(record_of(invoice, view))
        rows.emails.append(EmailRequest(key=f"invoice:{invoice.id}", account_id=order.account_id,
                                        document="invoice", document_id=invoice.id))
        return invoice

    # ----------------------------------------------------------------- payments

    def pay(self, invoice_id: UUID, payment_id: str, amount_micros: int,
            received_at: datetime | None = None) -> PaymentOutcome:
        """Apply a payment (VAT included); a payment id is applied once, ever."""

        def attempt() -> PaymentOutcome:
            invoice = self.find(invoice_id)
            if invoice is None:
                return "not_found"
            paid_before = invoice.status == "paid"
            if not invoice.pay(payment_id, amount_micros, received_at or self.clock()):
                return "duplicate"
            rows = InvoicingRows(keys=[KeyRow("payment", payment_id)])
            if invoice.status == "paid" and not paid_before:
                rows.outbox.append((INVOICING_PAID, views.paid_message(invoice, payment_id)))
            self._save(invoice, rows)
            return "applied"

        return self._retrying(attempt)

    # ----------------------------------------------------------- voids, credits

    def void(self, invoice_id: UUID, reason: str, key: str | None) -> InvoiceView:
        digest = request_hash("void", str(invoice_id), reason)

        def attempt() -> InvoiceView:
            replay = self._replay("void", key, digest)
            if replay is not None:
                return msgspec.json.decode(replay, type=InvoiceView)
            invoice = self.require(invoice_id)
            invoice.void(reason, self.clock())
            view = views.invoice_view(invoice)
            rows = InvoicingRows(outbox=[(INVOICING_VOIDED, views.voided_message(invoice))])
            if key is not None:
                rows.keys.append(KeyRow("void", key, digest, msgspec.json.encode(view)))
            self._save(invoice, rows)
            return view

        return self._retrying(attempt)

    def credit(self, invoice_id: UUID, net_micros: int | None, reason: str,
               key: str | None) -> CreditNoteView:
        digest = request_hash("credit", str(invoice_id), net_micros, reason)

        def attempt() -> CreditNoteView:
            replay = self._replay("credit", key, digest)
            if replay is not None:
                return msgspec.json.decode(replay, type=CreditNoteView)
            invoice = self.require(invoice_id)
            invoice.check_is_creditable(net_micros)
            now = self.clock()
            paid_before = invoice.status == "paid"
            rows = InvoicingRows()
            self._number(invoice, "CN", now, rows)
            note = invoice.credit(credit_note_id_for(invoice.id, key or str(uuid4())),
                                  self._claimed(rows), net_micros, reason, now)
            view = views.credit_note_view(invoice, note)
            rows.credit_notes.append(CreditNoteRecord(
                credit_note_id=UUID(note.credit_note_id), invoice_id=invoice.id,
                account_id=UUID(invoice.account_id), number=note.number,
                currency=invoice.currency, issued_at=now, view=msgspec.json.encode(view)))
            rows.outbox.append((INVOICING_CREDIT_NOTE_ISSUED,
                                views.credit_note_message(invoice, note)))
            if invoice.status == "paid" and not paid_before:
                rows.outbox.append((INVOICING_PAID, views.paid_message(invoice, None)))
            rows.emails.append(EmailRequest(key=f"credit_note:{note.credit_note_id}",
                                            account_id=UUID(invoice.account_id),
                                            document="credit_note",
                                            document_id=UUID(note.credit_note_id)))
            if key is not None:
                rows.keys.append(KeyRow("credit", key, digest, msgspec.json.encode(view)))
            self._save(invoice, rows)
            return view

        return self._retrying(attempt)

    # ------------------------------------------------------------------ overdue

    def mark_overdue(self, invoice_id: UUID, now: datetime | None = None) -> bool:
        def attempt() -> bool:
            invoice = self.find(invoice_id)
            at = now or self.clock()
            if invoice is None or not invoice.mark_overdue(at):
                return False
            rows = InvoicingRows(outbox=[(INVOICING_OVERDUE, views.overdue_message(invoice, at))])
            self._save(invoice, rows)
            return True

        return self._retrying(attempt)

    # ------------------------------------------------------------------ loading

    def find(self, invoice_id: UUID) -> Invoice | None:
        try:
            invoice: object = self.app.repository.get(invoice_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(invoice, Invoice)
        return invoice

    def require(self, invoice_id: UUID) -> Invoice:
        invoice = self.find(invoice_id)
        if invoice is None:
            raise errors.InvoiceNotFound(f"invoice {invoice_id} not found")
        return invoice

    # ---------------------------------------------------------------- internals

    def _number(self, invoice: Invoice, kind: SeriesKind, now: datetime,
                rows: InvoicingRows) -> None:
        series = series_of(kind, now)
        rows.number = NumberClaim(series, self.app.next_sequence(series))

    @staticmethod
    def _claimed(rows: InvoicingRows) -> str:
        assert rows.number is not None
        return document_number(rows.number.series, rows.number.sequence)

    def _replay(self, scope: str, key: str | None, digest: str) -> bytes | None:
        if key is None:
            return None
        datastore = self.app.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT request_hash, response FROM {}.idempotency_keys"
                             " WHERE scope = %s AND key = %s")
                         .format(Identifier(datastore.schema)), (scope, key))
            row = curs.fetchone()
        if row is None:
            return None
        if row["request_hash"] != digest:
            raise errors.IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used with a different request")
        return bytes(row["response"])

    def _save(self, invoice: Invoice, rows: InvoicingRows) -> None:
        rows.invoices = [record_of(invoice)]
        self.app.save(invoice, invoicing_rows=rows)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        for tries in range(1, SAVE_ATTEMPTS_MAX + 1):
            try:
                return attempt()
            except IntegrityError as exc:
                # Another writer saved first (the same invoice, this number, this key):
                # reload and decide again.
                log.info("invoicing.save_conflict", attempt=tries, error=str(exc)[:200])
        raise errors.InvoicingError(f"gave up after {SAVE_ATTEMPTS_MAX} conflicting saves")


def record_of(invoice: Invoice, view: InvoiceView | None = None) -> InvoiceRecord:
    """The read model's row; `view` when already built for the invoice as it stands."""
    return InvoiceRecord(
        invoice_id=invoice.id, account_id=UUID(invoice.account_id), number=invoice.number,
        status=invoice.status, kind=invoice.kind, currency=invoice.currency,
        period=invoice.period, billing_run_id=invoice.billing_run_id,
        total_micros=invoice.total_micros, amount_due_micros=invoice.amount_due_micros,
        issued_at=invoice.issued_at, due_at=invoice.due_at, version=invoice.version,
        view=msgspec.json.encode(view if view is not None else views.invoice_view(invoice)),
    )
