"""The email outbox table (migration 0100_email_outbox.sql): enqueue in the caller's
transaction, claim with a lease, record each attempt's outcome.

Every outcome is recorded only by the claim that holds the row (`lease_token`): a relay
whose lease ran out while it was still sending cannot overwrite what the relay that took the
row over has recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from invoicing_service.mail.message import Attachment, OutgoingEmail

Conn = psycopg.AsyncConnection[Any]


async def enqueue_email(conn: Conn, message: OutgoingEmail) -> bool:
    """Add an email in the caller's transaction; nothing is sent unless it commits.

    False when an email with this idempotency key exists already (pending, sent or failed):
    it is never sent twice, and the first one's content stands.
    """
    cursor = await conn.execute(
        "INSERT INTO email_outbox (idempotency_key, account_id, kind, recipients, subject,"
        " text_body, html_body) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING email_id",
        (message.idempotency_key, message.account_id, message.kind, list(message.recipients),
         message.subject, message.text_body, message.html_body),
    )
    row = await cursor.fetchone()
    if row is None:
        return False
    if message.attachments:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO email_attachments (email_id, position, filename, content_type,"
                " content) VALUES (%s, %s, %s, %s, %s)",
                [(row[0], position, a.filename, a.content_type, a.content)
                 for position, a in enumerate(message.attachments)],
            )
    return True


@dataclass(frozen=True, slots=True)
class ClaimedEmail:
    email_id: int
    attempts: int  # including the one this claim is for
    email: OutgoingEmail


async def claim_due(conn: Conn, *, token: UUID, batch_size_max: int,
                    lease_s: float) -> list[ClaimedEmail]:
    """Lease up to `batch_size_max` due emails to `token` and count the attempt.

    Due: pending and past its retry time, or sending with a lease that ran out (its relay
    died, or was cut off, somewhere between claiming and recording). SKIP LOCKED lets several
    relays claim disjoint batches; the lease, committed before any SMTP call, keeps the rows
    theirs after this transaction ends.
    """
    cursor = await conn.execute(
        "WITH due AS ("
        "  SELECT email_id FROM email_outbox"
        "  WHERE status IN ('pending', 'sending') AND next_attempt_at <= now()"
        "  ORDER BY next_attempt_at, email_id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE email_outbox e SET status = 'sending', lease_token = %s,"
        "  attempts = e.attempts + 1,"
        "  next_attempt_at = now() + make_interval(secs => %s)"
        " FROM due WHERE e.email_id = due.email_id"
        " RETURNING e.email_id, e.attempts, e.idempotency_key, e.account_id, e.kind,"
        "  e.recipients, e.subject, e.text_body, e.html_body",
        (batch_size_max, token, lease_s),
    )
    rows = await cursor.fetchall()
    if not rows:
        return []
    attachments: dict[int, list[Attachment]] = {}
    cursor = await conn.execute(
        "SELECT email_id, filename, content_type, content FROM email_attachments"
        " WHERE email_id = ANY(%s) ORDER BY email_id, position",
        ([row[0] for row in rows],),
    )
    for email_id, filename, content_type, content in await cursor.fetchall():
        attachments.setdefault(email_id, []).append(
            Attachment(filename=filename, content_type=content_type, content=bytes(content)))
    return [
        ClaimedEmail(
            email_id=row[0],
            attempts=row[1],
            email=OutgoingEmail(
                idempotency_key=row[2], account_id=row[3], kind=row[4],
                recipients=tuple(row[5]), subject=row[6], text_body=row[7], html_body=row[8],
                attachments=tuple(attachments.get(row[0], ())),
            ),
        )
        for row in sorted(rows, key=lambda r: r[0])
    ]


async def record_sent(conn: Conn, email_id: int, token: UUID, *, delivery: str,
                      note: str | None) -> bool:
    cursor = await conn.execute(
        "UPDATE email_outbox SET status = 'sent', sent_at = now(), delivery = %s,"
        " last_error = %s, lease_token = NULL"
        " WHERE email_id = %s AND lease_token = %s",
        (delivery, note, email_id, token),
    )
    return cursor.rowcount == 1


async def record_retry(conn: Conn, email_id: int, token: UUID, *, delay_s: float,
                       error: str) -> bool:
    cursor = await conn.execute(
        "UPDATE email_outbox SET status = 'pending', lease_token = NULL, last_error = %s,"
        " next_attempt_at = now() + make_interval(secs => %s)"
        " WHERE email_id = %s AND lease_token = %s",
        (error, delay_s, email_id, token),
    )
    return cursor.rowcount == 1


async def record_failed(conn: Conn, email_id: int, token: UUID, *, error: str) -> bool:
    cursor = await conn.execute(
        "UPDATE email_outbox SET status = 'failed', lease_token = NULL, last_error = %s"
        " WHERE email_id = %s AND lease_token = %s",
        (error, email_id, token),
    )
    return cursor.rowcount == 1


async def count_backlog(conn: Conn) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM email_outbox WHERE status IN ('pending', 'sending')")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def purge_sent_attachments(conn: Conn, *, older_than_s: float) -> int:
    """Drop the attachments of emails sent longer ago than `older_than_s`: the PDF can be
    rendered again from the invoice at any time (same bytes), and a month of invoices'
    PDFs would otherwise grow the table by hundreds of megabytes. The email row stays, as
    the history of what was sent to whom and when."""
    cursor = await conn.execute(
        "DELETE FROM email_attachments a USING email_outbox e"
        " WHERE a.email_id = e.email_id AND e.status = 'sent'"
        " AND e.sent_at < now() - make_interval(secs => %s)",
        (older_than_s,),
    )
    return cursor.rowcount


async def resend(conn: Conn, idempotency_key: str) -> bool:
    """Operator's re-send of a failed email (the CLI's "re-send"): due again now, with a
    fresh count of attempts. A sent or pending email is left alone: never twice."""
    cursor = await conn.execute(
        "UPDATE email_outbox SET status = 'pending', attempts = 0, next_attempt_at = now()"
        " WHERE idempotency_key = %s AND status = 'failed'",
        (idempotency_key,),
    )
    return cursor.rowcount == 1


async def send_again(conn: Conn, idempotency_key: str) -> str | None:
    """An operator's deliberate second copy of a sent email (the customer lost the invoice):
    a new email with its own key (`<key>:again:<n>`), the same recipients, subject, body and
    attachments. None when there is no such email, or its attachments were already cleared
    (then the document's PDF route serves the same bytes)."""
    cursor = await conn.execute(
        "SELECT email_id, (SELECT count(*) FROM email_outbox a WHERE a.idempotency_key LIKE"
        " e.idempotency_key || ':again:%%') FROM email_outbox e WHERE idempotency_key = %s",
        (idempotency_key,))
    row = await cursor.fetchone()
    if row is None:
        return None
    email_id, copies = row
    had = await (await conn.execute("SELECT count(*) FROM email_attachments WHERE email_id = %s",
                                    (email_id,))).fetchone()
    original_had = await (await conn.execute(
        "SELECT kind IN ('invoice', 'credit_note') FROM email_outbox WHERE email_id = %s",
        (email_id,))).fetchone()
    if original_had and original_had[0] and had and had[0] == 0:
        return None
    key = f"{idempotency_key}:again:{int(copies) + 1}"
    copied = await (await conn.execute(
        "INSERT INTO email_outbox (idempotency_key, account_id, kind, recipients, subject,"
        " text_body, html_body) SELECT %s, account_id, kind, recipients, subject, text_body,"
        " html_body FROM email_outbox WHERE email_id = %s RETURNING email_id",
        (key, email_id))).fetchone()
    assert copied is not None
    await conn.execute(
        "INSERT INTO email_attachments (email_id, position, filename, content_type, content)"
        " SELECT %s, position, filename, content_type, content FROM email_attachments"
        " WHERE email_id = %s", (copied[0], email_id))
    return key
