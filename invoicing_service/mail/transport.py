"""How an email leaves: over SMTP (aiosmtplib), or into the log when no server is set.

A transport says what happened in one of three ways: `Delivered` (the server accepted the
message for at least one recipient), `TransientFailure` (try again later: 4xx answers,
connection trouble, timeouts, and server-wide refusals such as a failed login, which are a
configuration problem and not this email's), or `PermanentFailure` (the server refused this
message or every recipient with a 5xx code: sending it again would be refused again).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Final, Literal, Protocol

import aiosmtplib
import structlog

from invoicing_service.mail.message import OutgoingEmail
from invoicing_service.mail.settings import SmtpServer

log = structlog.get_logger(__name__)

ERROR_CHARS_MAX: Final = 900
Delivery = Literal["smtp", "logged_only"]


@dataclass(frozen=True, slots=True)
class Delivered:
    delivery: Delivery
    note: str | None = None


class TransientFailure(Exception):
    """Not sent this time; the relay schedules another attempt."""


class PermanentFailure(Exception):
    """Refused for good; the relay marks the email failed with this error."""


class Transport(Protocol):
    async def deliver(self, email: OutgoingEmail, message: EmailMessage) -> Delivered: ...


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS_MAX]


# Answers about this message (its sender, a recipient, its content); any other SMTP answer
# (greeting, EHLO, AUTH, STARTTLS) is about the server or our configuration.
_ABOUT_THE_MESSAGE = (
    aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError,
)


class SmtpTransport:
    """One connection per email: a relay sends a few emails at a time, not thousands, and a
    fresh connection cannot carry a half-finished transaction of an earlier one."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def deliver(self, email: OutgoingEmail, message: EmailMessage) -> Delivered:
        server = self._server
        try:
            refused, _reply = await aiosmtplib.send(
                message,
                recipients=list(email.recipients),
                hostname=server.host,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.security == "tls",
                start_tls=server.security == "starttls",
                timeout=server.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            error = "every recipient refused: " + "; ".join(
                f"{r.recipient} {r.code} {r.message}" for r in exc.recipients)
            if all(code >= 500 for code in codes):
                raise PermanentFailure(error[:ERROR_CHARS_MAX]) from exc
            raise TransientFailure(error[:ERROR_CHARS_MAX]) from exc
        except _ABOUT_THE_MESSAGE as exc:
            if exc.code >= 500:
                raise PermanentFailure(describe(exc)) from exc
            raise TransientFailure(describe(exc)) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientFailure(describe(exc)) from exc
        note = None
        if refused:
            # Accepted for the others: sending again would repeat it to them.
            note = ("accepted; refused for " + "; ".join(
                f"{address} {reply.code} {reply.message}" for address, reply in refused.items()
            ))[:ERROR_CHARS_MAX]
        return Delivered("smtp", note)


class LogTransport:
    """Development without an SMTP server: log what would be sent, never the bodies (an
    email may carry a link or a figure that must not end up in logs)."""

    async def deliver(self, email: OutgoingEmail, message: EmailMessage) -> Delivered:
        log.info(
            "email.logged_only",
            kind=email.kind,
            to=list(email.recipients),
            subject=email.subject,
            message_id=str(message["Message-ID"]),
            attachments=[{"filename": a.filename, "content_type": a.content_type,
                          "bytes": len(a.content)} for a in email.attachments],
        )
        return Delivered("logged_only", "logged only: no SMTP_HOST configured")


def transport_for(server: SmtpServer | None) -> Transport:
    return LogTransport() if server is None else SmtpTransport(server)
