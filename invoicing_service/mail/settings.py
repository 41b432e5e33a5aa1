"""Mail settings of invoicing_service: the SMTP server and how the relay retries.

`MailSettings` extends the kernel's `ServiceSettings`; the service's own settings class
derives from it (`class InvoicingSettings(MailSettings)`), so SMTP_HOST, SMTP_PORT, ... (or
INVOICING_SMTP_HOST, ...) are read and validated at start-up like every other setting.

With no SMTP_HOST (development), the relay logs what it would send and marks it sent as
`logged_only`; APP_ENV=production refuses to start without one.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from invoicing_service.mail.message import InvalidEmail, check_address
from services.settings import Port, ServiceSettings, SettingsError

DEVELOPMENT_MAIL_FROM: Final = "billing@localhost.invalid"

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class SmtpServer(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how to connect; the password never reaches a log line or an error."""

    host: str
    port: int
    username: str | None
    password: str | None = msgspec.field(default=None)
    security: Literal["starttls", "tls", "none"]
    timeout_s: float

    def __repr__(self) -> str:
        return f"SmtpServer(host={self.host!r}, port={self.port}, security={self.security!r})"


class MailSettings(ServiceSettings, frozen=True, kw_only=True):
    """Read from SMTP_HOST, SMTP_PORT, ..., MAIL_FROM, EMAIL_RETRY_INITIAL_S, ..."""

    smtp_host: str | None = None
    # 587 with STARTTLS is the submission port every provider offers; 465 is implicit TLS.
    smtp_port: Port = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    # One SMTP command's budget (connect, EHLO, AUTH, MAIL, RCPT, DATA).
    smtp_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    mail_from: str = DEVELOPMENT_MAIL_FROM
    mail_reply_to: str | None = None
    # One whole message's budget; the lease a relay takes on a row must outlast it, or a
    # second relay would send the row while the first is still talking to the server.
    email_send_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 120.0
    email_lease_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 300.0
    # Exponential back-off with jitter between attempts at one email: 30 s, 1 min, 2 min, ...
    # up to an hour. 20 attempts span about 15 hours, longer than any greylisting.
    email_retry_initial_s: Seconds = 30.0
    email_retry_max_s: Seconds = 3600.0
    email_attempts_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    email_poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    email_batch_size_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    # Sent emails keep their attachments this long (a PDF renders again, same bytes).
    email_attachment_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30

    def __post_init__(self) -> None:
        try:
            check_address(self.mail_from)
            if self.mail_reply_to:
                check_address(self.mail_reply_to)
        except InvalidEmail as exc:
            raise SettingsError(f"MAIL_FROM / MAIL_REPLY_TO: {exc}") from None
        if self.email_lease_s < 2 * self.email_send_timeout_s:
            raise SettingsError("EMAIL_LEASE_S must be at least twice EMAIL_SEND_TIMEOUT_S")
        if self.email_retry_initial_s > self.email_retry_max_s:
            raise SettingsError("EMAIL_RETRY_INITIAL_S must not exceed EMAIL_RETRY_MAX_S")
        if bool(self.smtp_username) != bool(self.smtp_password):
            raise SettingsError("SMTP_USERNAME and SMTP_PASSWORD go together")

    @property
    def smtp_server(self) -> SmtpServer | None:
        """None: no server configured, emails are logged instead of sent."""
        if not self.smtp_host:
            return None
        return SmtpServer(
            host=self.smtp_host, port=self.smtp_port, username=self.smtp_username,
            password=self.smtp_password, security=self.smtp_security,
            timeout_s=self.smtp_timeout_s,
        )

    def require_production_secrets(self) -> None:
        super().require_production_secrets()
        if not self.is_production:
            return
        if not self.smtp_host:
            raise SettingsError("APP_ENV=production needs SMTP_HOST: invoices must be emailed")
        if self.mail_from == DEVELOPMENT_MAIL_FROM:
            raise SettingsError("APP_ENV=production needs MAIL_FROM of its own")
        if self.smtp_security == "none" and self.smtp_password:
            raise SettingsError("SMTP_SECURITY=none would send SMTP_PASSWORD in clear text")
