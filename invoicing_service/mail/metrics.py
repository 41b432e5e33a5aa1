"""Prometheus metrics of the email relay (served on /metrics with the HTTP metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EMAILS_SENT = Counter(
    "invoicing_emails_sent_total",
    "Emails handed to the SMTP server (delivery=smtp) or only logged (delivery=logged_only).",
    ("kind", "delivery"),
)
EMAILS_FAILED = Counter(
    "invoicing_emails_failed_total",
    "Emails given up: refused by the server (permanent) or out of attempts (exhausted).",
    ("kind", "reason"),
)
EMAIL_ATTEMPTS_FAILED = Counter(
    "invoicing_email_attempts_failed_total",
    "Attempts that failed transiently and were scheduled again.",
    ("kind",),
)
EMAIL_BACKLOG = Gauge(
    "invoicing_email_backlog",
    "Emails pending or being sent, as last counted by a relay of this process.",
)
