"""The email outbox and relay on real PostgreSQL against an in-process SMTP server
(aiosmtpd): an email arrives once with its PDF; a 451 is retried and delivered once; a 550
fails it for good; two relays send each email once; an idempotency key sends once; a crash
between the server's 250 and our commit re-sends the same Message-ID, once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from aiosmtpd.controller import Controller
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from invoicing_service.mail import (
    Attachment,
    EmailRelay,
    LogTransport,
    MailSettings,
    OutgoingEmail,
    RetryPolicy,
    SmtpServer,
    SmtpTransport,
    enqueue_email,
    message_id,
    mime_message,
    resend,
)
from invoicing_service.mail.outbox import claim_due, record_failed, record_retry
from services.database import conninfo, create_pool
from services.settings import load_settings
from tests.conftest import Infra

pytestmark = pytest.mark.integration

SCHEMA = "invoicing_mail_test"
MIGRATION = (Path(__file__).resolve().parents[2] / "invoicing_service" / "migrations"
             / "0100_email_outbox.sql")
FROM = "billing@relay.example"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
ACCOUNT = uuid.UUID("0b1e4c3a-59a4-4f7c-a0a1-3c8f7f1f2d10")


class Recorder:
    """An SMTP handler that records every accepted message; `answers` are returned, one per
    DATA command, before it starts accepting (e.g. ["451 4.7.1 Try later"])."""

    def __init__(self, answers: list[str] | None = None, rcpt_answer: str | None = None,
                 stall_s: float = 0.0):
        self.answers = list(answers or [])
        self.rcpt_answer = rcpt_answer
        self.stall_s = stall_s
        self.messages: list[EmailMessage] = []
        self.data_commands = 0
        self._lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self.rcpt_answer:
            return self.rcpt_answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stall_s:
            stall_s, self.stall_s = self.stall_s, 0.0
            await asyncio.sleep(stall_s)  # a server that hangs once, then recovers
            return "451 4.3.0 Too late"
        with self._lock:
            self.data_commands += 1
            if self.answers:
                return self.answers.pop(0)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(parsed)
        return "250 2.0.0 Accepted"

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpFixture:
    def __init__(self) -> None:
        self._controllers: list[Controller] = []

    def start(self, handler: Recorder) -> SmtpServer:
        controller = Controller(handler, hostname="127.0.0.1", port=free_port())
        controller.start()
        self._controllers.append(controller)
        return SmtpServer(host="127.0.0.1", port=controller.port, username=None,
                          security="none", timeout_s=5.0)

    def stop(self) -> None:
        for controller in self._controllers:
            controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpFixture]:
    fixture = SmtpFixture()
    try:
        yield fixture
    finally:
        fixture.stop()


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[AsyncConnectionPool]:
    async with await psycopg.AsyncConnection.connect(
        conninfo(infra.database_url), autocommit=True
    ) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(SCHEMA)))
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(SCHEMA)))
        await conn.execute(MIGRATION.read_text().encode())
    pool = create_pool(infra.database_url, SCHEMA, max_size=6, name="mail-test")
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


def invoice_email(n: int = 1, **changes: Any) -> OutgoingEmail:
    fields: dict[str, Any] = dict(
        idempotency_key=f"invoice-issued:inv-{n}", account_id=ACCOUNT, kind="invoice",
        recipients=("accounts@acme.example",), subject=f"Invoice INV-2026-{n:06d}",
        text_body="Please find attached your invoice.",
        attachments=(Attachment(filename=f"INV-2026-{n:06d}.pdf",
                                content_type="application/pdf", content=PDF),),
    )
    fields.update(changes)
    return OutgoingEmail(**fields)


async def enqueue(pool: AsyncConnectionPool, *messages: OutgoingEmail) -> list[bool]:
    async with pool.connection() as conn, conn.transaction():
        return [await enqueue_email(conn, message) for message in messages]


async def row(pool: AsyncConnectionPool, key: str) -> dict[str, Any]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, attempts, last_error, delivery, sent_at IS NOT NULL,"
            " next_attempt_at > now() FROM email_outbox WHERE idempotency_key = %s", (key,))
        found = await cursor.fetchone()
    assert found is not None
    return dict(zip(("status", "attempts", "last_error", "delivery", "has_sent_at",
                     "waits"), found, strict=True))


def relay(pool: AsyncConnectionPool, server: SmtpServer, **options: Any) -> EmailRelay:
    options.setdefault("retry", RetryPolicy(initial_s=0.05, max_s=0.2, attempts_max=5))
    options.setdefault("lease_s", 10.0)
    options.setdefault("send_timeout_s", 5.0)
    options.setdefault("poll_interval_s", 0.05)
    return EmailRelay(pool, SmtpTransport(server), from_address=FROM, **options)


async def test_an_issued_invoice_arrives_once_with_its_pdf(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder()
    mailer = relay(pool, smtp.start(handler))
    assert await enqueue(pool, invoice_email()) == [True]

    assert await mailer.relay_once() == 1
    assert await mailer.relay_once() == 0  # nothing left: it is not sent again

    assert len(handler.messages) == 1
    received = handler.messages[0]
    assert received["Subject"] == "Invoice INV-2026-000001"
    assert received["To"] == "accounts@acme.example"
    assert received["From"] == FROM
    assert received["Message-ID"] == message_id("invoice-issued:inv-1", FROM)
    [attachment] = list(received.iter_attachments())
    assert attachment.get_filename() == "INV-2026-000001.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "sent" and state["delivery"] == "smtp"
    assert state["attempts"] == 1 and state["has_sent_at"]
    assert await mailer.refresh_backlog() == 0


async def test_a_rolled_back_transaction_sends_nothing(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder()
    mailer = relay(pool, smtp.start(handler))
    with pytest.raises(RuntimeError):
        async with pool.connection() as conn, conn.transaction():
            await enqueue_email(conn, invoice_email())
            raise RuntimeError("the issue failed")
    assert await mailer.relay_once() == 0
    assert handler.messages == []


async def test_the_same_key_enqueued_twice_is_sent_once(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder()
    mailer = relay(pool, smtp.start(handler))
    assert await enqueue(pool, invoice_email()) == [True]
    # A redelivered issue, even with a changed body: the first email stands.
    assert await enqueue(pool, invoice_email(text_body="again")) == [False]
    while await mailer.relay_once():
        pass
    assert await enqueue(pool, invoice_email()) == [False]  # after it was sent, too
    assert await mailer.relay_once() == 0
    assert len(handler.messages) == 1
    assert "Please find attached" in handler.messages[0].get_body().get_content()  # type: ignore[union-attr]


async def test_a_transient_refusal_is_retried_later_and_delivered_once(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder(answers=["451 4.7.1 Greylisted, try again later"])
    mailer = relay(pool, smtp.start(handler),
                   retry=RetryPolicy(initial_s=0.3, max_s=1.0, attempts_max=5))
    await enqueue(pool, invoice_email())

    assert await mailer.relay_once() == 1
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "pending" and state["attempts"] == 1
    assert "451" in state["last_error"] and state["waits"]
    assert await mailer.relay_once() == 0  # backing off: not due yet
    assert handler.messages == []

    await asyncio.sleep(0.7)
    assert await mailer.relay_once() == 1
    assert handler.data_commands == 2
    assert handler.message_ids() == [message_id("invoice-issued:inv-1", FROM)]
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "sent" and state["attempts"] == 2


async def test_a_permanent_refusal_fails_the_email_with_the_servers_answer(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder(answers=["550 5.7.1 Message rejected as spam"] * 5)
    mailer = relay(pool, smtp.start(handler))
    await enqueue(pool, invoice_email())
    assert await mailer.relay_once() == 1
    await asyncio.sleep(0.3)
    assert await mailer.relay_once() == 0  # failed is final: no retry
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "failed" and state["attempts"] == 1
    assert "550" in state["last_error"] and "rejected as spam" in state["last_error"]
    assert handler.data_commands == 1 and handler.messages == []


async def test_every_recipient_refused_with_5xx_is_permanent(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder(rcpt_answer="550 5.1.1 No such user")
    mailer = relay(pool, smtp.start(handler))
    await enqueue(pool, invoice_email())
    await mailer.relay_once()
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "failed" and "No such user" in state["last_error"]


async def test_an_operator_can_resend_a_failed_email_and_only_a_failed_one(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder(answers=["550 5.2.2 Mailbox full"])
    mailer = relay(pool, smtp.start(handler))
    await enqueue(pool, invoice_email())
    await mailer.relay_once()
    async with pool.connection() as conn:
        assert await resend(conn, "invoice-issued:inv-1")
    await mailer.relay_once()
    assert len(handler.messages) == 1
    async with pool.connection() as conn:
        assert not await resend(conn, "invoice-issued:inv-1")  # sent: never twice
    assert await mailer.relay_once() == 0


async def test_an_unreachable_server_is_retried_then_given_up(
    pool: AsyncConnectionPool
) -> None:
    nowhere = SmtpServer(host="127.0.0.1", port=free_port(), username=None, security="none",
                         timeout_s=1.0)
    mailer = relay(pool, nowhere, retry=RetryPolicy(initial_s=0.01, max_s=0.02,
                                                    attempts_max=3))
    await enqueue(pool, invoice_email())
    for _ in range(3):
        await asyncio.sleep(0.1)
        assert await mailer.relay_once() == 1
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "failed" and state["attempts"] == 3
    assert state["last_error"].startswith("gave up after 3 attempts")


async def test_two_relays_running_at_once_send_each_email_once(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder()
    server = smtp.start(handler)
    emails = [invoice_email(n) for n in range(40)]
    await enqueue(pool, *emails)
    relays = [relay(pool, server, batch_size_max=3, name=f"relay-{n}") for n in range(2)]
    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(*(r.start() for r in relays))
        try:
            async with asyncio.timeout(30):
                while len(handler.messages) < len(emails):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # time for a duplicate to show, if there were one
        finally:
            await asyncio.gather(*(r.stop() for r in relays))
    # Both took part: the claims really were concurrent, not one relay doing everything.
    senders = {entry["relay"] for entry in logs if entry["event"] == "email.sent"}
    assert senders == {"relay-0", "relay-1"}
    ids = handler.message_ids()
    assert len(ids) == len(emails) == len(set(ids))
    assert set(ids) == {message_id(e.idempotency_key, FROM) for e in emails}
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM email_outbox WHERE status = 'sent' AND attempts = 1")
        assert await cursor.fetchone() == (len(emails),)


async def test_a_crash_after_the_servers_250_resends_the_same_message_id_once(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    """The documented window: the server accepted, we died before recording it."""
    handler = Recorder()
    server = smtp.start(handler)
    await enqueue(pool, invoice_email())
    # The first relay claims the row and sends it, then "crashes": no outcome is recorded.
    async with pool.connection() as conn, conn.transaction():
        [claimed] = await claim_due(conn, token=uuid.uuid4(), batch_size_max=10, lease_s=0.5)
    await SmtpTransport(server).deliver(claimed.email,
                                        mime_message(claimed.email, from_address=FROM))
    survivor = relay(pool, server, lease_s=0.5, send_timeout_s=0.25)
    assert await survivor.relay_once() == 0  # the lease still holds: nobody else sends it
    await asyncio.sleep(0.7)
    assert await survivor.relay_once() == 1  # the lease ran out: sent again
    assert await survivor.relay_once() == 0
    ids = handler.message_ids()
    assert len(ids) == 2 and len(set(ids)) == 1  # one duplicate, recognisable as such
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "sent" and state["attempts"] == 2


async def test_a_relay_whose_lease_ran_out_cannot_overwrite_the_outcome(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder()
    await enqueue(pool, invoice_email())
    stale = uuid.uuid4()
    async with pool.connection() as conn, conn.transaction():
        await claim_due(conn, token=stale, batch_size_max=10, lease_s=0.2)
    await asyncio.sleep(0.4)
    await relay(pool, smtp.start(handler)).relay_once()  # took the row over and sent it
    async with pool.connection() as conn:
        assert not await record_retry(conn, 1, stale, delay_s=1, error="late")
        assert not await record_failed(conn, 1, stale, error="late")
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "sent" and len(handler.messages) == 1


async def test_a_server_that_stalls_past_the_send_timeout_is_retried(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    handler = Recorder(stall_s=1.5)
    mailer = relay(pool, smtp.start(handler), send_timeout_s=0.5, lease_s=1.0,
                   retry=RetryPolicy(initial_s=0.05, max_s=0.1, attempts_max=5))
    await enqueue(pool, invoice_email())
    assert await mailer.relay_once() == 1
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "pending" and "no answer within 0.5 s" in state["last_error"]
    await asyncio.sleep(1.5)  # the stalled DATA gives up on the server's side
    assert await mailer.relay_once() == 1
    assert len(handler.messages) == 1
    assert (await row(pool, "invoice-issued:inv-1"))["status"] == "sent"


async def test_without_an_smtp_server_emails_are_logged_not_sent(
    pool: AsyncConnectionPool
) -> None:
    secret = "reset link https://portal.example/t/abc123"
    mailer = EmailRelay(pool, LogTransport(), from_address=FROM, poll_interval_s=0.05)
    await enqueue(pool, invoice_email(text_body=secret))
    with structlog.testing.capture_logs() as logs:
        assert await mailer.relay_once() == 1
    [logged] = [entry for entry in logs if entry["event"] == "email.logged_only"]
    assert logged["to"] == ["accounts@acme.example"]
    assert logged["subject"] == "Invoice INV-2026-000001"
    assert logged["attachments"] == [{"filename": "INV-2026-000001.pdf",
                                      "content_type": "application/pdf", "bytes": len(PDF)}]
    assert secret not in repr(logs)
    state = await row(pool, "invoice-issued:inv-1")
    assert state["status"] == "sent" and state["delivery"] == "logged_only"
    assert "logged only" in state["last_error"]


async def test_attachments_of_long_sent_emails_are_purged_and_the_row_kept(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    mailer = relay(pool, smtp.start(Recorder()), attachment_retention_s=3600)
    await enqueue(pool, invoice_email(1), invoice_email(2), invoice_email(3))
    await mailer.relay_once()
    async with pool.connection() as conn:
        await conn.execute("UPDATE email_outbox SET sent_at = now() - interval '2 hours'"
                           " WHERE idempotency_key = 'invoice-issued:inv-1'")
        await conn.execute("UPDATE email_outbox SET status = 'failed', sent_at = NULL,"
                           " delivery = NULL WHERE idempotency_key = 'invoice-issued:inv-2'")
    assert await mailer.purge_attachments() == 1
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT e.idempotency_key, count(a.email_id) FROM email_outbox e"
            " LEFT JOIN email_attachments a USING (email_id) GROUP BY 1 ORDER BY 1")
        assert await cursor.fetchall() == [
            ("invoice-issued:inv-1", 0), ("invoice-issued:inv-2", 1),
            ("invoice-issued:inv-3", 1)]


async def test_a_relay_built_from_the_services_settings_sends_as_soon_as_woken(
    pool: AsyncConnectionPool, smtp: SmtpFixture
) -> None:
    """What the service's wiring does: relay from settings, started as a background task,
    woken after the commit that enqueued (its poll interval is far longer than the wait)."""
    handler = Recorder()
    server = smtp.start(handler)
    settings = load_settings(MailSettings, service_name="invoicing_service",
                             http_port_default=8003, environ={
                                 "DATABASE_URL": "postgresql://unused", "NATS_URL": "nats://x",
                                 "SMTP_HOST": server.host, "SMTP_PORT": str(server.port),
                                 "SMTP_SECURITY": "none", "MAIL_FROM": FROM,
                                 "EMAIL_POLL_INTERVAL_S": "60"})
    mailer = EmailRelay.from_settings(pool, settings)
    await mailer.start()
    try:
        await asyncio.sleep(0.2)  # the first pass found nothing; now it waits up to 60 s
        await enqueue(pool, invoice_email())
        mailer.wake()
        async with asyncio.timeout(10):
            while not handler.messages:
                await asyncio.sleep(0.02)
    finally:
        await mailer.stop()
    assert handler.message_ids() == [message_id("invoice-issued:inv-1", FROM)]
    assert (await row(pool, "invoice-issued:inv-1"))["status"] == "sent"


async def test_the_table_refuses_what_the_code_would_never_write(
    pool: AsyncConnectionPool
) -> None:
    async with pool.connection() as conn:
        for values in (
            ("k1", "Invoice", [], "invoice"),          # no recipient
            ("k2", "", ["a@b.example"], "invoice"),   # empty subject
            ("k3", "S", ["a@b.example"], "Bad Kind"),  # kind out of form
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO email_outbox (idempotency_key, subject, recipients, kind,"
                        " text_body) VALUES (%s, %s, %s, %s, '')", values)
