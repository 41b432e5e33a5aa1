-- invoicing's own tables beside its event store (which eventsourcing creates as
-- invoicing_events / invoicing_snapshots). Rows marked "with the events" are written in the
-- same transaction as the invoice events they describe (app/recorder.py).

-- Accounts as the ledger publishes them (ledger.v1.events.account_updated); a message older
-- than the stored version is ignored, so redelivery and reordering are harmless.
CREATE TABLE IF NOT EXISTS accounts (
    account_id     uuid        PRIMARY KEY,
    version        bigint      NOT NULL,
    account_type   text        NOT NULL,
    currency       text        NOT NULL,
    country        text        NOT NULL,
    vat_number     text,
    reverse_charge boolean     NOT NULL,
    closed         boolean     NOT NULL,
    name           text,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_postpay ON accounts (account_id) WHERE account_type = 'postpay';

-- What invoicing knows of a customer that the ledger does not (PUT .../billing-profile).
CREATE TABLE IF NOT EXISTS billing_profiles (
    account_id     uuid        PRIMARY KEY,
    legal_name     text        NOT NULL,
    address_lines  text[]      NOT NULL,
    country        text,
    billing_email  text,
    po_number      text,
    net_terms_days integer     NOT NULL DEFAULT 30 CHECK (net_terms_days BETWEEN 0 AND 365),
    vat_exemption  text CHECK (vat_exemption IN ('zero_rated', 'exempt', 'outside_scope')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Rated usage from ledger.v1.events.entry_posted (kind usage), one row per ledger entry.
-- amount_micros is the debit as a positive number; period is occurred_at's month in UTC.
CREATE TABLE IF NOT EXISTS usage_lines (
    entry_id          uuid        PRIMARY KEY,
    account_id        uuid        NOT NULL,
    currency          text        NOT NULL,
    product           text        NOT NULL,
    quantity          bigint      NOT NULL CHECK (quantity >= 0),
    unit_price_micros bigint      NOT NULL CHECK (unit_price_micros >= 0),
    amount_micros     bigint      NOT NULL,
    occurred_at       timestamptz NOT NULL,
    period            text        NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    received_at       timestamptz NOT NULL DEFAULT now(),
    invoiced_on       uuid
);
CREATE INDEX IF NOT EXISTS usage_lines_unbilled ON usage_lines (account_id, period)
    WHERE invoiced_on IS NULL;
CREATE INDEX IF NOT EXISTS usage_lines_period ON usage_lines (period, account_id);

-- Marks usage lines billed by invoices (with the events). A line already billed (by another
-- run racing this one) is not marked again and fails the whole save as a unique violation:
-- a usage line is billed at most once.
CREATE OR REPLACE FUNCTION bill_usage(p_entries uuid[], p_invoices uuid[])
RETURNS bigint LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    marked bigint;
BEGIN
    UPDATE usage_lines u SET invoiced_on = b.invoice_id
        FROM unnest(p_entries, p_invoices) AS b(entry_id, invoice_id)
        WHERE u.entry_id = b.entry_id AND u.invoiced_on IS NULL;
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked <> cardinality(p_entries) THEN
        RAISE EXCEPTION '% of % usage lines were billed already', cardinality(p_entries) - marked,
            cardinality(p_entries) USING ERRCODE = 'unique_violation';
    END IF;
    RETURN marked;
END
$$;

-- Gap-free document numbers: one counter row per series (INV-2026, CN-2026), claimed with
-- the issue event (claim_document_number); a concurrent issuer waits on the row.
CREATE TABLE IF NOT EXISTS number_series (
    series      text   PRIMARY KEY,
    last_number bigint NOT NULL CHECK (last_number >= 0)
);

-- Claims `p_count` numbers from the one the caller expects (read before the transaction).
-- Another issuer that took any of them first makes this fail as a unique violation, so the
-- save rolls back whole and the application retries with the next numbers.
CREATE OR REPLACE FUNCTION claim_document_numbers(p_series text, p_first bigint, p_count integer)
RETURNS bigint LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    claimed bigint;
BEGIN
    INSERT INTO number_series (series, last_number) VALUES (p_series, 0)
        ON CONFLICT (series) DO NOTHING;
    UPDATE number_series SET last_number = last_number + p_count WHERE series = p_series
        RETURNING last_number INTO claimed;
    IF claimed IS DISTINCT FROM p_first + p_count - 1 THEN
        RAISE EXCEPTION 'numbers % to % of series % are taken; the last is %', p_first,
            p_first + p_count - 1, p_series, claimed USING ERRCODE = 'unique_violation';
    END IF;
    RETURN claimed;
END
$$;

-- Read model of invoices (with the events): lists, totals, the portal.
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id        uuid        PRIMARY KEY,
    account_id        uuid        NOT NULL,
    number            text        UNIQUE,
    status            text        NOT NULL,
    kind              text        NOT NULL,
    currency          text        NOT NULL,
    period            text,
    billing_run_id    text,
    total_micros      bigint      NOT NULL,
    amount_due_micros bigint      NOT NULL CHECK (amount_due_micros >= 0),
    issued_at         timestamptz,
    due_at            timestamptz,
    seq               bigserial,
    version           bigint      NOT NULL,
    view              bytea       NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_account ON invoices (account_id, seq DESC);
CREATE INDEX IF NOT EXISTS invoices_seq ON invoices (seq DESC);
CREATE INDEX IF NOT EXISTS invoices_run ON invoices (billing_run_id) WHERE billing_run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS invoices_due ON invoices (due_at) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS credit_notes (
    credit_note_id uuid        PRIMARY KEY,
    invoice_id     uuid        NOT NULL,
    account_id     uuid        NOT NULL,
    number         text        NOT NULL UNIQUE,
    currency       text        NOT NULL,
    issued_at      timestamptz NOT NULL,
    view           bytea       NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_notes_invoice ON credit_notes (invoice_id);

-- Billing runs: one per period (the unique key is what makes two concurrent requests one run).
CREATE TABLE IF NOT EXISTS billing_runs (
    billing_run_id text        PRIMARY KEY,
    period         text        NOT NULL UNIQUE,
    status         text        NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    accounts_total bigint,
    accounts_done  bigint      NOT NULL DEFAULT 0,
    last_account   uuid,
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    error          text
);

-- Keys that have had their effect (with the events): HTTP Idempotency-Key per route, and
-- payment ids applied to invoices.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE TABLE IF NOT EXISTS outbox (
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
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (outbox_id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Portal reads run as invoicing_reader with the tenant in invoicing.tenant_id (SET LOCAL), as
-- the ledger's: fail-closed row-level security on every tenant-scoped table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'invoicing_reader') THEN
        CREATE ROLE invoicing_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'invoicing_reader', 'MEMBER') THEN
        EXECUTE format('GRANT invoicing_reader TO %I', current_user);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO invoicing_reader', current_schema());
END
$$;

GRANT SELECT ON invoices, credit_notes, billing_profiles TO invoicing_reader;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices FOR SELECT TO invoicing_reader
    USING (account_id = nullif(current_setting('invoicing.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON credit_notes FOR SELECT TO invoicing_reader
    USING (account_id = nullif(current_setting('invoicing.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON billing_profiles FOR SELECT TO invoicing_reader
    USING (account_id = nullif(current_setting('invoicing.tenant_id', true), '')::uuid);
