-- The payments schema: checkouts we created, provider events as received, payments, refunds,
-- security events, the invoice cache fed from invoicing.v1.*, and the outbox.
-- Amounts paid through providers are integers in minor units (pence, cents), as the
-- providers count them; invoice amounts from invoicing.v1.* are micro-units, as on the wire.

-- A checkout session as we asked the provider to create it. Its amounts, currency and
-- account are the truth a completed session is compared with; the provider's metadata is not.
CREATE TABLE checkouts (
    checkout_id         text PRIMARY KEY,
    caller              text NOT NULL,             -- the token's sub: idempotency keys are per caller
    idempotency_key     text NOT NULL,
    request_fingerprint text NOT NULL,
    account_id          uuid NOT NULL,
    purpose             text NOT NULL CHECK (purpose IN ('topup', 'invoice')),
    invoice_id          text,
    currency            text NOT NULL CHECK (currency IN ('GBP', 'EUR', 'USD')),
    net_minor           bigint NOT NULL CHECK (net_minor > 0),
    vat_minor           bigint NOT NULL CHECK (vat_minor >= 0),
    vat_rate_bp         integer NOT NULL CHECK (vat_rate_bp BETWEEN 0 AND 10000),
    vat_treatment       text NOT NULL CHECK (vat_treatment IN ('standard', 'reverse_charge')),
    description         text NOT NULL,
    status              text NOT NULL DEFAULT 'creating'
                        CHECK (status IN ('creating', 'open', 'completed', 'expired')),
    stripe_session_id   text UNIQUE,
    checkout_url        text,
    expires_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    opened_at           timestamptz,
    UNIQUE (caller, idempotency_key),
    CHECK (purpose <> 'invoice' OR invoice_id IS NOT NULL),
    CHECK (status = 'creating' OR stripe_session_id IS NOT NULL)
);
CREATE INDEX checkouts_by_account ON checkouts (account_id, created_at DESC);

-- Every provider event or notification, once, as received. The primary key is the
-- de-duplication: it is inserted in the same transaction as the state change it causes.
CREATE TABLE provider_events (
    provider     text NOT NULL CHECK (provider IN ('stripe', 'hubspot')),
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    outcome      text NOT NULL DEFAULT 'received',
    payload      jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

-- Payments received, pending or failed. `source` says what the row stands for: a checkout
-- session (one row per session), one failed payment attempt, or a paid HubSpot invoice.
CREATE TABLE payments (
    payment_id            text PRIMARY KEY,
    source                text NOT NULL
                          CHECK (source IN ('checkout_session', 'payment_attempt', 'hubspot_invoice')),
    provider              text NOT NULL CHECK (provider IN ('stripe', 'hubspot')),
    provider_reference    text NOT NULL,
    stripe_payment_intent text,
    checkout_id           text REFERENCES checkouts,
    account_id            uuid NOT NULL,
    purpose               text NOT NULL CHECK (purpose IN ('topup', 'invoice')),
    invoice_id            text,
    currency              text NOT NULL CHECK (currency IN ('GBP', 'EUR', 'USD')),
    net_minor             bigint NOT NULL CHECK (net_minor >= 0),
    vat_minor             bigint NOT NULL CHECK (vat_minor >= 0),
    refunded_total_minor  bigint NOT NULL DEFAULT 0,  -- gross, cumulative
    refunded_net_minor    bigint NOT NULL DEFAULT 0,
    refunded_vat_minor    bigint NOT NULL DEFAULT 0,
    status                text NOT NULL
                          CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded',
                                            'partially_refunded')),
    failure_code          text,
    failure_message       text,
    provider_event_id     text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    received_at           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded_total_minor BETWEEN 0 AND net_minor + vat_minor),
    CHECK (refunded_net_minor + refunded_vat_minor = refunded_total_minor),
    CHECK (purpose <> 'invoice' OR invoice_id IS NOT NULL)
);
-- One payment per session or invoice, however often and in whatever order it is announced.
CREATE UNIQUE INDEX payments_one_per_reference ON payments (provider, provider_reference)
    WHERE source <> 'payment_attempt';
CREATE INDEX payments_by_intent ON payments (stripe_payment_intent)
    WHERE stripe_payment_intent IS NOT NULL;
CREATE INDEX payments_newest ON payments (created_at DESC, payment_id DESC);
CREATE INDEX payments_by_account ON payments (account_id, created_at DESC, payment_id DESC);

-- Refunds as sent on: one row per growth of a payment's refunded total.
CREATE TABLE refunds (
    refund_id             text PRIMARY KEY,
    payment_id            text NOT NULL REFERENCES payments,
    provider              text NOT NULL,
    provider_reference    text NOT NULL,
    account_id            uuid NOT NULL,
    currency              text NOT NULL,
    gross_minor           bigint NOT NULL CHECK (gross_minor > 0),
    net_minor             bigint NOT NULL CHECK (net_minor >= 0),
    vat_minor             bigint NOT NULL CHECK (vat_minor >= 0),
    refunded_total_minor  bigint NOT NULL,
    reason                text,
    provider_event_id     text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, refunded_total_minor),
    CHECK (net_minor + vat_minor = gross_minor)
);

-- What Stripe said about refunds, kept whether or not the payment is known yet: a refund
-- that arrives before its payment waits here and is applied when the payment is recorded.
CREATE TABLE stripe_refund_totals (
    payment_intent         text PRIMARY KEY,
    charge_id              text NOT NULL,
    amount_refunded_minor  bigint NOT NULL CHECK (amount_refunded_minor >= 0),
    currency               text NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE stripe_refund_objects (
    refund_object_id  text PRIMARY KEY,
    payment_intent    text NOT NULL,
    charge_id         text,
    amount_minor      bigint NOT NULL CHECK (amount_minor >= 0),
    currency          text NOT NULL,
    status            text,
    reason            text,
    event_created     bigint NOT NULL,  -- Stripe's event time: a late older event never wins
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_refund_objects_by_intent ON stripe_refund_objects (payment_intent);

-- Deliveries that were correctly signed but did not match what we created: never credited.
CREATE TABLE security_events (
    security_event_id  bigserial PRIMARY KEY,
    provider           text NOT NULL,
    provider_event_id  text NOT NULL,
    kind               text NOT NULL,
    claimed_account    text,
    detail             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX security_events_newest ON security_events (created_at DESC);

-- An account's currency and tax position as set by an operator: what a portal top-up uses.
CREATE TABLE account_profiles (
    account_id      uuid PRIMARY KEY,
    currency        text NOT NULL CHECK (currency IN ('GBP', 'EUR', 'USD')),
    country         text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    vat_number      text,
    reverse_charge  boolean NOT NULL DEFAULT false,
    updated_by      text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Invoices as announced on invoicing.v1.*: what an invoice checkout charges and who may pay.
CREATE TABLE invoices (
    invoice_id           text PRIMARY KEY,
    number               text NOT NULL,
    account_id           uuid NOT NULL,
    currency             text NOT NULL CHECK (currency IN ('GBP', 'EUR', 'USD')),
    subtotal_micros      bigint NOT NULL CHECK (subtotal_micros >= 0),
    vat_total_micros     bigint NOT NULL CHECK (vat_total_micros >= 0),
    status               text NOT NULL CHECK (status IN ('open', 'paid', 'void')),
    issued_at            timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- Kept even when its invoice is not known yet; what is owed sums them at read time.
CREATE TABLE invoice_credit_notes (
    credit_note_id  text PRIMARY KEY,
    invoice_id      text NOT NULL,
    net_micros      bigint NOT NULL,
    vat_micros      bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoice_credit_notes_by_invoice ON invoice_credit_notes (invoice_id);

-- services.outbox.OUTBOX_DDL
CREATE TABLE outbox (
    outbox_id   bigserial PRIMARY KEY,
    subject     text NOT NULL,
    msg_id      text NOT NULL CHECK (length(msg_id) BETWEEN 1 AND 128),
    payload     bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX outbox_unsent ON outbox (outbox_id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
