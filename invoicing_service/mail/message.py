"""An email as the outbox holds it, and the MIME message it becomes when it is sent.

Everything is bounded and checked before it reaches the table: recipients, subject, bodies,
attachments. A header value never holds a line break (that would let a customer-supplied
name add headers of its own).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Final, Literal
from uuid import UUID

# invoice and credit_note (issue 10) and the alerts of issue 13. The table checks the form
# only, so a kind added here needs no migration.
EmailKind = Literal[
    "invoice",
    "credit_note",
    "invoice_overdue",
    "balance_low",
    "renewal_past_due",
    "renewal_suspended",
]

IDEMPOTENCY_KEY_CHARS_MAX: Final = 200
RECIPIENTS_MAX: Final = 20
ADDRESS_CHARS_MAX: Final = 254  # RFC 5321's path limit, less the angle brackets
SUBJECT_CHARS_MAX: Final = 250
TEXT_BODY_CHARS_MAX: Final = 100_000
HTML_BODY_CHARS_MAX: Final = 500_000
ATTACHMENTS_MAX: Final = 10
ATTACHMENT_BYTES_MAX: Final = 10 * 1024 * 1024
# Many providers refuse messages above 20-25 MB once base64 has grown them by a third.
ATTACHMENTS_BYTES_TOTAL_MAX: Final = 15 * 1024 * 1024
FILENAME_CHARS_MAX: Final = 200

# Deliberately narrower than RFC 5322: a billing address is a plain local@domain.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_CONTENT_TYPE = re.compile(r"[a-z]+/[a-z0-9.+-]+")
_FILENAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\\"]")


class InvalidEmail(ValueError):
    """An email the outbox refuses to hold; the message says which part is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.filename) <= FILENAME_CHARS_MAX \
                or _FILENAME_FORBIDDEN.search(self.filename):
            raise InvalidEmail(f"attachment filename not allowed: {self.filename!r}")
        if not _CONTENT_TYPE.fullmatch(self.content_type):
            raise InvalidEmail(f"attachment content type not allowed: {self.content_type!r}")
        if len(self.content) > ATTACHMENT_BYTES_MAX:
            raise InvalidEmail(f"attachment {self.filename} is over {ATTACHMENT_BYTES_MAX} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingEmail:
    """What a caller asks to send. `idempotency_key` makes it happen once, however often it
    is enqueued: "invoice-issued:<invoice id>", "balance-low:<account>:<crossing>"."""

    idempotency_key: str
    account_id: UUID | None
    kind: EmailKind
    recipients: tuple[str, ...]
    subject: str
    text_body: str
    html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.idempotency_key) <= IDEMPOTENCY_KEY_CHARS_MAX:
            raise InvalidEmail(f"idempotency key: 1 to {IDEMPOTENCY_KEY_CHARS_MAX} characters")
        if not 1 <= len(self.recipients) <= RECIPIENTS_MAX:
            raise InvalidEmail(f"1 to {RECIPIENTS_MAX} recipients")
        for address in self.recipients:
            check_address(address)
        if not 1 <= len(self.subject) <= SUBJECT_CHARS_MAX or _has_line_break(self.subject):
            raise InvalidEmail(f"subject: 1 to {SUBJECT_CHARS_MAX} characters on one line")
        if len(self.text_body) > TEXT_BODY_CHARS_MAX:
            raise InvalidEmail(f"text body over {TEXT_BODY_CHARS_MAX} characters")
        if self.html_body is not None and len(self.html_body) > HTML_BODY_CHARS_MAX:
            raise InvalidEmail(f"HTML body over {HTML_BODY_CHARS_MAX} characters")
        if len(self.attachments) > ATTACHMENTS_MAX:
            raise InvalidEmail(f"at most {ATTACHMENTS_MAX} attachments")
        if sum(len(a.content) for a in self.attachments) > ATTACHMENTS_BYTES_TOTAL_MAX:
            raise InvalidEmail(f"attachments over {ATTACHMENTS_BYTES_TOTAL_MAX} bytes in all")


def check_address(address: str) -> str:
    if len(address) > ADDRESS_CHARS_MAX or not _ADDRESS.fullmatch(address):
        raise InvalidEmail(f"not an email address: {address!r}")
    return address


def _has_line_break(value: str) -> bool:
    return any(ch in value for ch in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def message_id(idempotency_key: str, from_address: str) -> str:
    """A Message-ID that is the same for every attempt at one email: a receiving system that
    de-duplicates on it (many do, and every mail client threads on it) sees a re-sent email
    as the same message. Hashed, so a key's characters cannot break the header."""
    domain = from_address.rpartition("@")[2] or "localhost"
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"<{digest}.billing@{domain}>"


def mime_message(
    email: OutgoingEmail, *, from_address: str, reply_to: str | None = None,
    date_header: str | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = ", ".join(email.recipients)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = email.subject
    message["Message-ID"] = message_id(email.idempotency_key, from_address)
    message["Date"] = date_header or formatdate(usegmt=True)
    # RFC 3834: sent by a program; auto-responders must not answer it (no reply loops).
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(email.text_body)
    if email.html_body is not None:
        message.add_alternative(email.html_body, subtype="html")
    for attachment in email.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(attachment.content, maintype=maintype, subtype=subtype,
                               filename=attachment.filename)
    # Boundaries from the key instead of random ones: every attempt at one email is the same
    # bytes apart from its Date. "=_" cannot occur in base64, and a 32-digit hash not in text.
    digest = hashlib.sha256(email.idempotency_key.encode()).hexdigest()[:32]
    for depth, part in enumerate(p for p in message.walk() if p.is_multipart()):
        part.set_boundary(f"=_{digest}.{depth}")
    return message
