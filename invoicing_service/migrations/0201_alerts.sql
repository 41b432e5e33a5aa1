-- Account alerts of invoicing_service (invoicing_service/alerts, issue 13): notification
-- settings per account and the history of alerts sent.

CREATE TABLE notification_settings (
    account_id           uuid PRIMARY KEY,
    balance_low          boolean NOT NULL DEFAULT true,
    renewal_past_due   boolean NOT NULL DEFAULT true,
    renewal_suspended  boolean NOT NULL DEFAULT true,
    invoice_overdue      boolean NOT NULL DEFAULT true,
    -- Used when the billing profile (invoicing core) has no email of its own.
    billing_email        text CHECK (length(billing_email) BETWEEN 3 AND 254),
    extra_recipients     text[] NOT NULL DEFAULT '{}'
                         CHECK (cardinality(extra_recipients) <= 10),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- One row per alert per recipient. source_event_id is the event that caused it: an alert
-- is sent at most once per event and kind (the email outbox's idempotency key is built
-- from the same pair).
CREATE TABLE alert_history (
    alert_id         bigserial PRIMARY KEY,
    account_id       uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('balance_low', 'renewal_past_due',
                                                   'renewal_suspended', 'invoice_overdue')),
    channel          text NOT NULL DEFAULT 'email' CHECK (channel IN ('email')),
    recipient        text NOT NULL,
    source_event_id  text NOT NULL,
    email_key        text NOT NULL,
    sent_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_event_id, kind, recipient)
);
CREATE INDEX alert_history_by_account ON alert_history (account_id, sent_at DESC, alert_id DESC);
CREATE INDEX alert_history_last_of_kind ON alert_history (account_id, kind, sent_at DESC);
