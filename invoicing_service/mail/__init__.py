"""The mailer of invoicing_service: an email outbox in PostgreSQL and a relay that sends it
over SMTP, for issued invoices and credit notes (issue 10) and account alerts (issue 13).

Wiring (in invoicing_service/main.py, with `InvoicingSettings(MailSettings)`)::

    relay = EmailRelay.from_settings(runtime.pool, settings)
    ServiceParts(..., on_startup=[lambda _: relay.start()], on_shutdown=[lambda _: relay.stop()])

and in a use case, inside the transaction that issues the document::

    if await enqueue_email(conn, invoice_email(view, pdf, supplier=..., recipients=[...])):
        ...  # after commit: relay.wake()
"""

from invoicing_service.mail.compose import credit_note_email, invoice_email
from invoicing_service.mail.message import (
    Attachment,
    EmailKind,
    InvalidEmail,
    OutgoingEmail,
    message_id,
    mime_message,
)
from invoicing_service.mail.outbox import enqueue_email, resend
from invoicing_service.mail.relay import EmailRelay, RetryPolicy
from invoicing_service.mail.settings import MailSettings, SmtpServer
from invoicing_service.mail.transport import (
    Delivered,
    LogTransport,
    PermanentFailure,
    SmtpTransport,
    TransientFailure,
    Transport,
)

__all__ = [
    "Attachment",
    "Delivered",
    "EmailKind",
    "EmailRelay",
    "InvalidEmail",
    "LogTransport",
    "MailSettings",
    "OutgoingEmail",
    "PermanentFailure",
    "RetryPolicy",
    "SmtpServer",
    "SmtpTransport",
    "TransientFailure",
    "Transport",
    "credit_note_email",
    "enqueue_email",
    "invoice_email",
    "message_id",
    "mime_message",
    "resend",
]
