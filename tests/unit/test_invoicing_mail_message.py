"""Emails before they reach the outbox: bounded, no header injection, a Message-ID that is
the same on every attempt, the PDF attached as it was given; retry waits that grow."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import pytest

from contracts.http.invoicing import CreditNoteView, InvoiceView
from contracts.invoicing import InvoiceLine, VatBreakdown
from invoicing_service.documents import Party
from invoicing_service.mail import (
    Attachment,
    InvalidEmail,
    OutgoingEmail,
    RetryPolicy,
    credit_note_email,
    invoice_email,
    message_id,
    mime_message,
)

ACCOUNT = UUID("0b1e4c3a-59a4-4f7c-a0a1-3c8f7f1f2d10")
SUPPLIER = Party(name="Relay Messaging Ltd", address_lines=("1 Example Street",),
                 country="GB", vat_number="GB123456789")
PDF = b"%PDF-1.4 not really\x00\xff"


def outgoing(**changes: object) -> OutgoingEmail:
    fields: dict[str, object] = dict(
        idempotency_key="invoice-issued:inv-1", account_id=ACCOUNT, kind="invoice",
        recipients=("accounts@acme.example",), subject="Invoice INV-2026-000001",
        text_body="Please find attached.",
        attachments=(Attachment(filename="INV-2026-000001.pdf", content_type="application/pdf",
                                content=PDF),),
    )
    fields.update(changes)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def test_the_message_id_depends_on_the_idempotency_key_only() -> None:
    first = message_id("invoice-issued:inv-1", "billing@relay.example")
    assert first == message_id("invoice-issued:inv-1", "billing@relay.example")
    assert first != message_id("invoice-issued:inv-2", "billing@relay.example")
    assert first.startswith("<") and first.endswith("@relay.example>")
    # Any characters in a key: the header is still one well-formed token.
    odd = message_id("a key with spaces, <angles> and\nbreaks", "billing@relay.example")
    assert " " not in odd and "\n" not in odd


def test_every_attempt_builds_the_same_message_apart_from_its_date() -> None:
    one = mime_message(outgoing(), from_address="billing@relay.example", date_header="d1")
    two = mime_message(outgoing(), from_address="billing@relay.example", date_header="d1")
    assert one.as_bytes() == two.as_bytes()
    assert one["Message-ID"] == message_id("invoice-issued:inv-1", "billing@relay.example")
    assert one["Auto-Submitted"] == "auto-generated"


def test_the_pdf_is_attached_byte_for_byte() -> None:
    raw = mime_message(outgoing(), from_address="billing@relay.example").as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    attachments = list(parsed.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["INV-2026-000001.pdf"]
    assert attachments[0].get_content_type() == "application/pdf"
    assert attachments[0].get_content() == PDF


@pytest.mark.parametrize("changes", [
    {"subject": "Invoice\r\nBcc: victim@example.com"},
    {"subject": "Invoice\nX-Evil: 1"},
    {"subject": ""},
    {"subject": "x" * 251},
    {"recipients": ()},
    {"recipients": ("not-an-address",)},
    {"recipients": ("a@example.com\r\nBcc: b@example.com",)},
    {"recipients": ("a@b.example",) * 21},
    {"idempotency_key": ""},
    {"idempotency_key": "k" * 201},
    {"text_body": "x" * 100_001},
    {"attachments": (Attachment(filename="a.pdf", content_type="application/pdf",
                                content=b"x"),) * 11},
])
def test_an_email_out_of_bounds_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidEmail):
        outgoing(**changes)


@pytest.mark.parametrize(("filename", "content_type"), [
    ("../etc/passwd", "application/pdf"), ('a"b.pdf', "application/pdf"),
    ("a\r\nb.pdf", "application/pdf"), ("a.pdf", "Application/PDF; x=1"), ("", "text/plain"),
])
def test_an_attachment_with_an_unsafe_name_or_type_is_refused(filename: str,
                                                              content_type: str) -> None:
    with pytest.raises(InvalidEmail):
        Attachment(filename=filename, content_type=content_type, content=b"")


def test_retry_waits_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=30.0, max_s=3600.0, attempts_max=20)
    for attempts in range(1, 8):
        low = 30.0 * 2 ** (attempts - 1)
        waits = {policy.delay_s(attempts) for _ in range(20)}
        assert all(min(low, 3600.0) <= w <= min(low + 30.0, 3600.0) for w in waits)
        assert len(waits) > 1 or low >= 3600.0  # jittered: relays do not retry in step
    assert policy.delay_s(30) == 3600.0


def _line() -> InvoiceLine:
    return InvoiceLine(description="SMS", quantity=1, unit_price="1.00", net_amount="1.00",
                       vat_rate="20", vat_treatment="standard", vat_amount="0.20")


def test_an_issued_invoice_becomes_one_email_keyed_by_its_id() -> None:
    view = msgspec.convert(dict(
        invoice_id="inv-2a07", number="INV-2026-000123", account_id=str(ACCOUNT),
        status="open", currency="GBP", period="2026-10", lines=[_line()],
        vat_breakdown=[VatBreakdown(vat_rate="20", vat_treatment="standard",
                                    net_amount="1.00", vat_amount="0.20")],
        subtotal="1.00", vat_total="0.20", total="1.20", amount_paid="0.00",
        amount_due="1.20", issued_at=datetime(2026, 11, 1, tzinfo=UTC),
        due_at=datetime(2026, 12, 1, tzinfo=UTC),
    ), InvoiceView, strict=False)
    message = invoice_email(view, PDF, supplier=SUPPLIER, recipients=["a@acme.example"])
    assert message.idempotency_key == "invoice-issued:inv-2a07"
    assert message.kind == "invoice" and message.account_id == ACCOUNT
    assert message.subject == "Invoice INV-2026-000123 from Relay Messaging Ltd"
    assert "£1.20" in message.text_body and "1 December 2026" in message.text_body
    assert message.attachments[0].filename == "INV-2026-000123.pdf"
    assert message.attachments[0].content == PDF
    with pytest.raises(InvalidEmail):
        invoice_email(msgspec.structs.replace(view, number=None), PDF, supplier=SUPPLIER,
                      recipients=["a@acme.example"])


def test_a_credit_note_email_names_the_invoice_it_credits() -> None:
    note = CreditNoteView(
        credit_note_id="cn-0b5c", number="CN-2026-000007", invoice_id="inv-2a07",
        account_id=ACCOUNT, currency="EUR", lines=[_line()], vat_breakdown=[],
        subtotal="1.00", vat_total="0.00", total="1.00", reason="Goodwill",
        issued_at=datetime(2026, 11, 20, tzinfo=UTC),
    )
    message = credit_note_email(note, "INV-2026-000123", PDF, supplier=SUPPLIER,
                                recipients=["a@acme.example"])
    assert message.idempotency_key == "credit-note-issued:cn-0b5c"
    assert message.kind == "credit_note"
    assert "INV-2026-000123" in message.text_body and "€1.00" in message.text_body
