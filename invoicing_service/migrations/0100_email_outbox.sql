-- The email outbox of invoicing_service (invoicing_service/mail): an email is a row committed
-- with the change that causes it (an invoice issued, a credit note, an alert), sent later by
-- the relay over SMTP. Numbered 0100 so the core's migrations (0001...) come first.
--
-- States: pending -> sending (leased to one relay) -> sent | pending (retry later) | failed.
-- A row in `sending` whose lease ran out (its relay died) is due again: next_attempt_at holds
-- the lease's end while sending, the next retry's time while pending.

CREATE TABLE email_outbox (
    email_id         bigserial PRIMARY KEY,
    -- The caller's key: one email per key, ever ("invoice-issued:inv-2a07"). The Message-ID
    -- header is derived from it, so a re-send after an unknown outcome carries the same id.
    idempotency_key  text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    account_id       uuid,
    -- invoice, credit_note, and the alert kinds of issue 13; checked by form, not by list, so
    -- a new kind needs no migration (the Python EmailKind lists the known ones).
    kind             text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,39}$'),
    recipients       text[] NOT NULL
                     CHECK (cardinality(recipients) BETWEEN 1 AND 20
                            AND array_position(recipients, NULL) IS NULL),
    subject          text NOT NULL CHECK (length(subject) BETWEEN 1 AND 250),
    text_body        text NOT NULL CHECK (length(text_body) <= 100000),
    html_body        text CHECK (length(html_body) <= 500000),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 1000),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Which claim holds the row while `sending`: an outcome is recorded only by that claim.
    lease_token      uuid,
    last_error       text CHECK (length(last_error) <= 1000),
    -- How a sent row went out: over SMTP, or only logged (no SMTP host configured).
    delivery         text CHECK (delivery IN ('smtp', 'logged_only')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL AND delivery IS NOT NULL)),
    CHECK ((status = 'sending') = (lease_token IS NOT NULL))
);
-- The relay's claim: only rows still to send are indexed.
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at, email_id)
    WHERE status IN ('pending', 'sending');
CREATE INDEX email_outbox_by_account ON email_outbox (account_id, created_at DESC);

CREATE TABLE email_attachments (
    email_id      bigint NOT NULL REFERENCES email_outbox (email_id) ON DELETE CASCADE,
    position      smallint NOT NULL CHECK (position BETWEEN 0 AND 9),
    filename      text NOT NULL CHECK (length(filename) BETWEEN 1 AND 200),
    content_type  text NOT NULL CHECK (content_type ~ '^[a-z]+/[a-z0-9.+-]+$'),
    content       bytea NOT NULL CHECK (octet_length(content) <= 10485760),
    PRIMARY KEY (email_id, position)
);
