-- The sync schema: Xero grants and connections (credentials encrypted), OAuth states, the
-- per-connection sync queue, external references, mappings, and the outbox.

-- PKCE state of one authorization in progress: bound to the operator who started it.
CREATE TABLE oauth_states (
    state          text PRIMARY KEY,
    operator       text NOT NULL,
    verifier_key   text NOT NULL,            -- key id of the encrypted verifier
    verifier_enc   bytea NOT NULL,
    binding_hash   text NOT NULL,            -- sha256 of the browser's binding cookie
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    consumed_at    timestamptz
);

-- One authorization (token set) at Xero; it may reach several organisations.
CREATE TABLE xero_grants (
    grant_id            text PRIMARY KEY,
    operator            text NOT NULL,
    key_id              text NOT NULL,       -- the encryption key of both tokens below
    access_token_enc    bytea NOT NULL,
    refresh_token_enc   bytea NOT NULL,
    access_expires_at   timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'broken', 'revoked')),
    last_error          text,
    refreshed_at        timestamptz,
    refreshes           integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- One Xero organisation (tenant) we push to: a "connection".
CREATE TABLE connections (
    connection_id       text PRIMARY KEY,    -- Xero's tenantId
    target              text NOT NULL DEFAULT 'xero' CHECK (target IN ('xero', 'hubspot')),
    grant_id            text REFERENCES xero_grants,
    xero_connection_id  text,                -- /connections id (differs from tenantId)
    name                text NOT NULL,
    is_default          boolean NOT NULL DEFAULT false,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'broken', 'disconnected')),
    last_success_at     timestamptz,
    last_error          text,
    connected_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX connections_one_default ON connections (target) WHERE is_default;

-- Which connection an account's documents go to; accounts not listed go to the default.
CREATE TABLE account_connections (
    account_id     uuid PRIMARY KEY,
    connection_id  text NOT NULL REFERENCES connections
);

-- Operator mappings: product -> item code, account code, tax type. product '*' is the
-- fallback; connection_id '*' applies to every connection.
CREATE TABLE mappings (
    connection_id  text NOT NULL DEFAULT '*',
    product        text NOT NULL,
    item_code      text,
    account_code   text,
    tax_type       text,                 -- overrides the VAT treatment mapping
    PRIMARY KEY (connection_id, product)
);
-- VAT treatment -> Xero TaxType, per connection ('*' for all).
CREATE TABLE tax_mappings (
    connection_id  text NOT NULL DEFAULT '*',
    vat_treatment  text NOT NULL,
    vat_rate       text NOT NULL DEFAULT '*',
    tax_type       text NOT NULL,
    PRIMARY KEY (connection_id, vat_treatment, vat_rate)
);

-- Our documents as announced, for building pushes and reading Xero payments back.
CREATE TABLE invoices (
    invoice_id     text PRIMARY KEY,
    number         text NOT NULL,
    account_id     uuid NOT NULL,
    currency       text NOT NULL,
    subtotal_micros bigint NOT NULL,
    vat_total_micros bigint NOT NULL,
    total_micros   bigint NOT NULL,
    issued         jsonb NOT NULL
);
CREATE INDEX invoices_by_number ON invoices (number);

-- The sync queue: one row per change to push to one connection. Written by the subscribers
-- in the transaction that records the message; drained by the workers.
CREATE TABLE sync_jobs (
    job_id          bigserial PRIMARY KEY,
    connection_id   text REFERENCES connections,   -- NULL: no connection yet
    account_id      uuid,
    kind            text NOT NULL CHECK (kind IN ('invoice', 'credit_note', 'payment', 'void',
                                                  'fetch_invoice')),
    subject_id      text NOT NULL,                 -- our invoice / credit note / payment id
    source_key      text NOT NULL UNIQUE,          -- de-duplicates redelivered messages
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    outcome_unknown boolean NOT NULL DEFAULT false,  -- a create may have reached Xero
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_jobs_due ON sync_jobs (connection_id, next_attempt_at, job_id)
    WHERE status IN ('pending', 'running');
CREATE INDEX sync_jobs_dead ON sync_jobs (job_id) WHERE status = 'dead';
CREATE INDEX sync_jobs_subject ON sync_jobs (subject_id);

-- What exists at Xero for which of ours: written on success, read before every create.
CREATE TABLE external_refs (
    connection_id  text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('contact', 'invoice', 'credit_note',
                                                 'payment', 'allocation')),
    our_id         text NOT NULL,
    external_id    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, kind, our_id)
);
CREATE INDEX external_refs_by_external ON external_refs (connection_id, kind, external_id);

-- Xero payments already announced as payments.v1.received: exactly once.
CREATE TABLE xero_payments_seen (
    connection_id  text NOT NULL,
    xero_payment_id text NOT NULL,
    payment_id     text NOT NULL,
    seen_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, xero_payment_id)
);

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
