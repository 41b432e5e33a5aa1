"""invoicing's event store: the eventsourcing application (tables invoicing_events and
invoicing_snapshots in schema invoicing) and a recorder that commits the service's side rows
in the same transaction as the events.

``InvoicingApplication.save(invoice, invoicing_rows=...)`` hands the rows to
``InvoicingRecorder._insert_events``, which runs inside the library's transaction before the
events are inserted. So a document number is claimed, the read model is updated, the usage a
new invoice bills is recorded (a billing run's watermark, or marks on named lines), the
outbox message is queued and an idempotency key is recorded
if and only if the events are stored: one commit, or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, StoredEvent, Transcoding
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from invoicing_service.domain.invoice import Invoice
from invoicing_service.domain.lines import Line
from services.database import conninfo, eventsourcing_env
from services.outbox import message_id

OUTBOX_CHANNEL = "invoicing_outbox"
SNAPSHOT_INTERVAL = 50


class LineAsDict(Transcoding):
    """Invoice lines in stored events: a typed value, versioned by its field names."""

    type = Line
    name = "invoice_line_v1"

    def encode(self, obj: Line) -> dict[str, Any]:
        return {"description": obj.description, "product": obj.product,
                "quantity": obj.quantity, "unit_price_micros": obj.unit_price_micros,
                "net_micros": obj.net_micros, "vat_rate": obj.vat_rate,
                "vat_treatment": obj.vat_treatment, "vat_micros": obj.vat_micros,
                "period": obj.period, "correction": obj.correction}

    def decode(self, data: dict[str, Any]) -> Line:
        return Line(**data)


@dataclass(frozen=True, slots=True)
class NumberClaim:
    """Numbers `sequence` .. `sequence + count - 1` of a series, expected to be its next."""

    series: str
    sequence: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class UsageWatermark:
    """What a billing run's invoice bills of its account and currency: every line not billed
    before that arrived up to `through_seq` for a period up to `through_period`. It follows
    the account and currency's last watermark (`previous_id`, 0 for none): two issuers that
    read the same last watermark cannot both commit."""

    through_seq: int
    through_period: str
    previous_id: int


@dataclass(frozen=True, slots=True)
class KeyRow:
    scope: str
    key: str
    request_hash: str | None = None
    response: bytes | None = None


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    """The read model's row of one invoice, as it stands after the save."""

    invoice_id: UUID
    account_id: UUID
    number: str | None
    status: str
    kind: str
    currency: str
    period: str | None
    billing_run_id: str | None
    total_micros: int
    amount_due_micros: int
    issued_at: datetime | None
    due_at: datetime | None
    version: int
    view: bytes


@dataclass(frozen=True, slots=True)
class CreditNoteRecord:
    credit_note_id: UUID
    invoice_id: UUID
    account_id: UUID
    number: str
    currency: str
    issued_at: datetime
    view: bytes


@dataclass(frozen=True, slots=True)
class EmailRequest:
    """An issued document to email to the customer (the seam the mailer plugs into)."""

    key: str
    account_id: UUID
    document: str  # "invoice" or "credit_note"
    document_id: UUID


@dataclass(slots=True)
class InvoicingRows:
    """What commits with one save of an invoice."""

    number: NumberClaim | None = None
    keys: list[KeyRow] = field(default_factory=list)
    invoices: list[InvoiceRecord] = field(default_factory=list)
    credit_notes: list[CreditNoteRecord] = field(default_factory=list)
    # (usage line, the invoice billing it)
    billed_usage: list[tuple[UUID, UUID]] = field(default_factory=list)
    # (invoice, its account, currency, and the watermark of the usage it bills)
    watermarks: list[tuple[UUID, UUID, str, UsageWatermark]] = field(default_factory=list)
    outbox: list[tuple[str, msgspec.Struct]] = field(default_factory=list)
    emails: list[EmailRequest] = field(default_factory=list)


EmailEnqueuer = Callable[[Cursor[DictRow], Sequence[EmailRequest]], None]


def enqueue_no_email(curs: Cursor[DictRow], emails: Sequence[EmailRequest]) -> None:
    """The seam where an issued invoice or credit note is queued for email, inside the issue
    transaction. The mailer (invoicing_service/mail) replaces this at wiring time."""


class InvoicingRecorder(PostgresApplicationRecorder):
    # Set by the application after construction; one per process.
    enqueue_emails: EmailEnqueuer = staticmethod(enqueue_no_email)

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        rows: InvoicingRows | None = kwargs.get("invoicing_rows")
        if rows is not None:
            self._insert_rows(curs, rows)
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                              **kwargs: Any) -> None:
        """The library's insert (table lock, notify, then the events) with the events as four
        arrays sent in binary, instead of one array of a composite type sent as text: quoting
        each event's JSON into the composite's text form took a third of a billing run's
        Python time."""
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            SQL("INSERT INTO {}.{} (originator_id, originator_version, topic, state)"
                " SELECT i, v, t, s FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
                " WITH ORDINALITY AS e(i, v, t, s, o) ORDER BY o RETURNING notification_id")
            .format(Identifier(self.datastore.schema), Identifier(self.events_table_name)),
            ([e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
             [e.topic for e in stored_events], [e.state for e in stored_events]))

    def _insert_rows(self, curs: Cursor[DictRow], rows: InvoicingRows) -> None:
        schema = Identifier(self.datastore.schema)
        if rows.number is not None:
            # Fails the whole save (unique violation) unless this is the series' next number.
            curs.execute(SQL("SELECT {}.claim_document_numbers(%s, %s, %s)").format(schema),
                         (rows.number.series, rows.number.sequence, rows.number.count))
        for key in rows.keys:
            curs.execute(SQL("INSERT INTO {}.idempotency_keys (scope, key, request_hash, response)"
                             " VALUES (%s, %s, %s, %s)").format(schema),
                         (key.scope, key.key, key.request_hash, key.response))
        if rows.billed_usage:
            entries = [entry for entry, _ in rows.billed_usage]
            invoices = [invoice for _, invoice in rows.billed_usage]
            # Fails the save if any line was billed already: billed at most once.
            curs.execute(SQL("SELECT {}.bill_usage(%s::uuid[], %s::uuid[])").format(schema),
                         (entries, invoices))
        if rows.watermarks:
            # Fails the save (unique violation) when another invoice followed the same last
            # watermark of an account and currency first: usage is billed at most once.
            curs.execute(
                SQL("INSERT INTO {}.usage_watermarks (invoice_id, account_id, currency,"
                    " through_seq, through_period, previous_id) SELECT * FROM"
                    " unnest(%b::uuid[], %b::uuid[], %b::text[], %b::bigint[], %b::text[],"
                    " %b::bigint[])").format(schema),
                ([w[0] for w in rows.watermarks], [w[1] for w in rows.watermarks],
                 [w[2] for w in rows.watermarks], [w[3].through_seq for w in rows.watermarks],
                 [w[3].through_period for w in rows.watermarks],
                 [w[3].previous_id for w in rows.watermarks]))
        if len(rows.invoices) == 1:
            self._upsert_invoice(curs, schema, rows.invoices[0])
        elif rows.invoices:
            self._upsert_invoices(curs, schema, rows.invoices)
        for note in rows.credit_notes:
            curs.execute(SQL("INSERT INTO {}.credit_notes (credit_note_id, invoice_id, account_id,"
                             " number, currency, issued_at, view)"
                             " VALUES (%s, %s, %s, %s, %s, %s, %s)").format(schema),
                         (note.credit_note_id, note.invoice_id, note.account_id, note.number,
                          note.currency, note.issued_at, note.view))
        if rows.outbox:
            # One statement for the save's messages (a billing run's page: hundreds).
            subjects, ids, payloads = [], [], []
            for subject, message in rows.outbox:
                subjects.append(subject)
                ids.append(message_id(subject, message))
                payloads.append(msgspec.json.encode(message))
            curs.execute(SQL("INSERT INTO {}.outbox (subject, msg_id, payload, headers)"
                             " SELECT s, m, p, '{{}}'::jsonb FROM unnest(%b::text[], %b::text[],"
                             " %b::bytea[]) WITH ORDINALITY AS t(s, m, p, o) ORDER BY o")
                         .format(schema),
                         (subjects, ids, payloads))
        if rows.outbox:
            curs.execute("SELECT pg_notify(%s, '')", (OUTBOX_CHANNEL,))
        if rows.emails:
            type(self).enqueue_emails(curs, rows.emails)

    @staticmethod
    def _upsert_invoices(curs: Cursor[DictRow], schema: Identifier,
                         records: Sequence[InvoiceRecord]) -> None:
        """Many new invoices in one statement (a billing run's page)."""
        columns: list[list[Any]] = [[] for _ in range(14)]
        for r in records:
            for column, value in zip(columns, (
                    r.invoice_id, r.account_id, r.number, r.status, r.kind, r.currency,
                    r.period, r.billing_run_id, r.total_micros, r.amount_due_micros,
                    r.issued_at, r.due_at, r.version, r.view), strict=True):
                column.append(value)
        curs.execute(
            SQL("INSERT INTO {}.invoices (invoice_id, account_id, number, status, kind, currency,"
                " period, billing_run_id, total_micros, amount_due_micros, issued_at, due_at,"
                " version, view) SELECT i, a, n, s, k, c, p, r, t, d, ia, da, v, w"
                " FROM unnest(%b::uuid[], %b::uuid[], %b::text[],"
                " %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[],"
                " %b::bigint[], %b::timestamptz[], %b::timestamptz[], %b::bigint[], %b::bytea[])"
                " WITH ORDINALITY AS x(i, a, n, s, k, c, p, r, t, d, ia, da, v, w, o) ORDER BY o"
                " ON CONFLICT (invoice_id) DO UPDATE SET number = EXCLUDED.number,"
                " status = EXCLUDED.status, amount_due_micros = EXCLUDED.amount_due_micros,"
                " issued_at = EXCLUDED.issued_at, due_at = EXCLUDED.due_at,"
                " version = EXCLUDED.version, view = EXCLUDED.view"
                " WHERE invoices.version < EXCLUDED.version").format(schema),
            columns)

    @staticmethod
    def _upsert_invoice(curs: Cursor[DictRow], schema: Identifier, r: InvoiceRecord) -> None:
        curs.execute(
            SQL("INSERT INTO {}.invoices (invoice_id, account_id, number, status, kind, currency,"
                " period, billing_run_id, total_micros, amount_due_micros, issued_at, due_at,"
                " version, view) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (invoice_id) DO UPDATE SET number = EXCLUDED.number,"
                " status = EXCLUDED.status, amount_due_micros = EXCLUDED.amount_due_micros,"
                " issued_at = EXCLUDED.issued_at, due_at = EXCLUDED.due_at,"
                " version = EXCLUDED.version, view = EXCLUDED.view"
                " WHERE invoices.version < EXCLUDED.version").format(schema),
            (r.invoice_id, r.account_id, r.number, r.status, r.kind, r.currency, r.period,
             r.billing_run_id, r.total_micros, r.amount_due_micros, r.issued_at, r.due_at,
             r.version, r.view))


class InvoicingApplication(Application[UUID]):
    """The event store of invoicing: tables invoicing_events and invoicing_snapshots."""

    name = "Invoicing"
    snapshotting_intervals = {Invoice: SNAPSHOT_INTERVAL}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(LineAsDict())

    def issued_among(self, invoice_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these invoices exist (the read model commits with their events)."""
        recorder = self.recorder
        assert isinstance(recorder, InvoicingRecorder)
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT invoice_id FROM {}.invoices WHERE invoice_id = ANY(%s)")
                         .format(Identifier(recorder.datastore.schema)), (list(invoice_ids),))
            return {row["invoice_id"] for row in curs.fetchall()}

    def next_sequence(self, series: str) -> int:
        """The number the series would give next (claimed for real in the save)."""
        recorder = self.recorder
        assert isinstance(recorder, InvoicingRecorder)
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT last_number FROM {}.number_series WHERE series = %s")
                         .format(Identifier(recorder.datastore.schema)), (series,))
            row = curs.fetchone()
        return (int(row["last_number"]) if row else 0) + 1


def invoicing_env(base: Mapping[str, str]) -> dict[str, str]:
    """eventsourcing settings for invoicing on top of the PostgreSQL ones."""
    return {
        **base,
        "APPLICATION_RECORDER_TOPIC": "invoicing_service.app.store:InvoicingRecorder",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }


EVENT_STORE_LOCK = "invoicing:event-store"


def open_event_store(database_url: str, schema: str = "invoicing") -> InvoicingApplication:
    """The event store; its tables are created if missing, one process at a time (two
    processes starting together would otherwise race on CREATE TABLE IF NOT EXISTS)."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (EVENT_STORE_LOCK,))
        try:
            return InvoicingApplication(env=invoicing_env(eventsourcing_env(database_url, schema)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (EVENT_STORE_LOCK,))
