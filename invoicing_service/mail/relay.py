"""The email relay: a background task that sends what the email outbox holds.

Each pass claims a batch of due rows (`FOR UPDATE SKIP LOCKED`, so several processes may run
relays), marks them `sending` with a lease and commits *before* any SMTP call, sends each
one, then records the outcome in a second transaction: `sent`, `pending` again with a
later retry time (exponential back-off with jitter), or `failed` (a 5xx refusal, or out of
attempts).

What "never twice" can and cannot mean over SMTP. SMTP has no idempotency key: the server
takes responsibility for a message when it answers 250 to the end of DATA, and nothing we
send before or after changes that. Our side of the bargain is the row, which records the
acceptance only when a transaction commits after the 250. So:

- a crash, stop or lost database before the SMTP call, or during it before the 250: the
  lease runs out, another pass sends the email. The recipient gets it once.
- a crash between the 250 and the commit of `sent` (one UPDATE's round trip; longer only
  if PostgreSQL is unreachable just then): the lease runs out and the email is sent again,
  with the same Message-ID (derived from the idempotency key), so that single duplicate is
  recognisable as such by the receiving side (mail clients thread and many servers
  de-duplicate on it). One such crash, at most one duplicate; never a different email.
- a send cut off by our own timeout is the same case: the server may have accepted it.

Closing that window entirely would need the receiving server to take part in a two-phase
commit, which SMTP does not offer; the lease (longer than a whole send may take) ensures
that no *second relay* sends a row while the first is still talking to the server, and the
outcome is recorded only by the claim holding the lease (`lease_token`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Final
from uuid import UUID, uuid4

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from invoicing_service.mail import metrics
from invoicing_service.mail.message import mime_message
from invoicing_service.mail.outbox import (
    ClaimedEmail,
    claim_due,
    count_backlog,
    purge_sent_attachments,
    record_failed,
    record_retry,
    record_sent,
)
from invoicing_service.mail.settings import MailSettings
from invoicing_service.mail.transport import (
    Delivered,
    PermanentFailure,
    TransientFailure,
    Transport,
    describe,
    transport_for,
)

log = structlog.get_logger(__name__)

# How often an idle relay drops the attachments of long-sent emails (in relay passes).
PURGE_EVERY_PASSES: Final = 1_800
# Emails of one batch in flight at once: SMTP servers throttle a client that opens many
# connections, and a batch is small anyway.
CONCURRENCY_MAX: Final = 4


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 30.0
    max_s: float = 3600.0
    attempts_max: int = 20

    def delay_s(self, attempts: int) -> float:
        """Wait before attempt `attempts + 1`: initial * 2^(attempts-1) plus up to `initial`
        of jitter, at most `max_s`: stamina's formula (tenacity's wait_exponential_jitter).
        The wait is not slept but kept in the row (next_attempt_at), so a retry survives a
        restart and any relay may make it; stamina's retrying callers have no public form
        that only computes a wait, hence these two lines instead of a second retry loop."""
        exponent = min(max(attempts, 1) - 1, 64)  # 2^64 s is past any cap: no overflow
        jitter_s = random.uniform(0, self.initial_s)  # noqa: S311 (jitter, not a secret)
        return min(self.max_s, self.initial_s * 2**exponent + jitter_s)


class EmailRelay:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        transport: Transport,
        *,
        from_address: str,
        reply_to: str | None = None,
        retry: RetryPolicy | None = None,
        lease_s: float = 300.0,
        send_timeout_s: float = 120.0,
        batch_size_max: int = 20,
        poll_interval_s: float = 2.0,
        attachment_retention_s: float = 30 * 86_400,
        name: str = "email",
    ) -> None:
        # A lease shorter than a send would let a second relay send a row still in flight.
        assert lease_s >= 2 * send_timeout_s > 0
        assert 1 <= batch_size_max <= 200 and poll_interval_s > 0
        self._pool = pool
        self._transport = transport
        self._from_address = from_address
        self._reply_to = reply_to
        self._retry = retry or RetryPolicy()
        self._lease_s = lease_s
        self._send_timeout_s = send_timeout_s
        self._batch_size_max = batch_size_max
        self._poll_interval_s = poll_interval_s
        self._attachment_retention_s = attachment_retention_s
        self._name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, pool: AsyncConnectionPool, settings: MailSettings) -> EmailRelay:
        server = settings.smtp_server
        if server is None:
            log.warning("email.no_smtp_host",
                        detail="SMTP_HOST is not set: emails are logged, not sent")
        return cls(
            pool,
            transport_for(server),
            from_address=settings.mail_from,
            reply_to=settings.mail_reply_to,
            retry=RetryPolicy(initial_s=settings.email_retry_initial_s,
                              max_s=settings.email_retry_max_s,
                              attempts_max=settings.email_attempts_max),
            lease_s=settings.email_lease_s,
            send_timeout_s=settings.email_send_timeout_s,
            batch_size_max=settings.email_batch_size_max,
            poll_interval_s=settings.email_poll_interval_s,
            attachment_retention_s=settings.email_attachment_retention_days * 86_400,
        )

    def wake(self) -> None:
        """Send soon: call after a commit that enqueued emails."""
        self._wake.set()

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-relay")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the emails in flight, or cut them off after `timeout_s`: their rows
        stay `sending` until the lease runs out, then are sent by the next relay."""
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        _done, pending = await asyncio.wait([task], timeout=timeout_s)
        for still_running in pending:
            still_running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def relay_once(self) -> int:
        """Claim one batch and attempt each email once; returns how many were attempted."""
        token = uuid4()
        async with self._pool.connection() as conn, conn.transaction():
            claimed = await claim_due(conn, token=token, batch_size_max=self._batch_size_max,
                                      lease_s=self._lease_s)
        if not claimed:
            return 0
        slots = asyncio.Semaphore(CONCURRENCY_MAX)

        async def attempt(email: ClaimedEmail) -> None:
            async with slots:
                outcome = await self._deliver(email)
            await self._record(email, token, outcome)

        results = await asyncio.gather(*(attempt(email) for email in claimed),
                                       return_exceptions=True)
        for email, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                # Most likely the database, between the server's answer and our record: the
                # row stays `sending` and is attempted again when its lease runs out.
                log.error("email.outcome_not_recorded", email_id=email.email_id,
                          relay=self._name, error=repr(result))
        return len(claimed)

    async def refresh_backlog(self) -> int:
        async with self._pool.connection() as conn:
            backlog = await count_backlog(conn)
        metrics.EMAIL_BACKLOG.set(backlog)
        return backlog

    async def _deliver(
        self, claimed: ClaimedEmail
    ) -> Delivered | TransientFailure | PermanentFailure:
        email = claimed.email
        try:
            message = mime_message(email, from_address=self._from_address,
                                   reply_to=self._reply_to)
            async with asyncio.timeout(self._send_timeout_s):
                return await self._transport.deliver(email, message)
        except (TransientFailure, PermanentFailure) as failure:
            return failure
        except TimeoutError:
            return TransientFailure(f"no answer within {self._send_timeout_s:g} s")
        except Exception as exc:
            # A bug must not lose the email: it is tried again, and the error is kept on it.
            log.error("email.deliver_crashed", email_id=claimed.email_id, error=repr(exc))
            return TransientFailure(describe(exc))

    async def _record(self, claimed: ClaimedEmail, token: UUID,
                      outcome: Delivered | TransientFailure | PermanentFailure) -> None:
        email = claimed.email
        context = {"email_id": claimed.email_id, "kind": email.kind,
                   "attempt": claimed.attempts, "relay": self._name}
        async with self._pool.connection() as conn, conn.transaction():
            if isinstance(outcome, Delivered):
                recorded = await record_sent(conn, claimed.email_id, token,
                                             delivery=outcome.delivery, note=outcome.note)
                metrics.EMAILS_SENT.labels(email.kind, outcome.delivery).inc()
                log.info("email.sent", delivery=outcome.delivery, **context)
            elif isinstance(outcome, PermanentFailure):
                recorded = await record_failed(conn, claimed.email_id, token,
                                               error=f"refused: {outcome}")
                metrics.EMAILS_FAILED.labels(email.kind, "permanent").inc()
                log.warning("email.refused", error=str(outcome), **context)
            elif claimed.attempts >= self._retry.attempts_max:
                recorded = await record_failed(
                    conn, claimed.email_id, token,
                    error=f"gave up after {claimed.attempts} attempts: {outcome}")
                metrics.EMAILS_FAILED.labels(email.kind, "exhausted").inc()
                log.warning("email.gave_up", error=str(outcome), **context)
            else:
                delay_s = self._retry.delay_s(claimed.attempts)
                recorded = await record_retry(conn, claimed.email_id, token, delay_s=delay_s,
                                              error=str(outcome))
                metrics.EMAIL_ATTEMPTS_FAILED.labels(email.kind).inc()
                log.info("email.retry_later", error=str(outcome), retry_in_s=round(delay_s, 1),
                         **context)
        if not recorded:
            # Our lease ran out and another relay claimed the row: its outcome stands.
            log.warning("email.lease_lost", **context)

    async def purge_attachments(self) -> int:
        async with self._pool.connection() as conn:
            purged = await purge_sent_attachments(
                conn, older_than_s=self._attachment_retention_s)
        if purged:
            log.info("email.attachments_purged", count=purged, relay=self._name)
        return purged

    async def _run(self) -> None:
        passes = 0
        while not self._stopping.is_set():
            self._wake.clear()
            passes += 1
            try:
                attempted = await self.relay_once()
                if attempted >= self._batch_size_max:
                    continue  # more are probably due
                await self.refresh_backlog()
                if passes % PURGE_EVERY_PASSES == 1:
                    await self.purge_attachments()
            except (psycopg.Error, OSError) as exc:
                log.warning("email.relay_failed", relay=self._name, error=str(exc))
            except Exception as exc:
                # A bug must not end the relay: emails would then wait for a restart.
                log.error("email.relay_crashed", relay=self._name, error=repr(exc))
            await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
