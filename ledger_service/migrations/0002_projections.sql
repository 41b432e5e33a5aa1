-- Read models of the ledger, built from the event log by ledger_service/projections.
-- Every row here can be dropped and rebuilt from ledger_events (ledgerctl rebuild); none is
-- the truth. Each projection's rows and its position in the log commit in one transaction.

-- How far each projection has applied the log: the notification_id of the last event it
-- applied, and when that commit happened. Rebuilds track their shadow tables under
-- '<name>__rebuild' until the swap.
CREATE TABLE IF NOT EXISTS projection_positions (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_positions (name) VALUES ('balances'), ('statement'), ('usage'), ('holds')
ON CONFLICT (name) DO NOTHING;

-- One row per account: what the replay of its events says now. credits lists the grants with
-- something left, in the order debits consume them:
-- [{grant_id, kind, granted_micros, remaining_micros, expires_at}].
CREATE TABLE IF NOT EXISTS balances (
    account_id          uuid        PRIMARY KEY,
    tenant_id           uuid        NOT NULL,
    currency            text        NOT NULL,
    account_type        text        NOT NULL,
    closed              boolean     NOT NULL,
    balance_micros      bigint      NOT NULL,
    available_micros    bigint      NOT NULL,
    held_micros         bigint      NOT NULL,
    credit_limit_micros bigint      NOT NULL,
    credits             jsonb       NOT NULL,
    version             bigint      NOT NULL,
    position            bigint      NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- One row per statement entry: each balance-changing event, and each billed usage line.
-- entry_seq = notification_id * 8192 + line: the order entries were posted, which is the
-- order balance_after_micros runs in, and the keyset of the portal's cursor paging.
CREATE TABLE IF NOT EXISTS statement_entries (
    account_id           uuid        NOT NULL,
    entry_seq            bigint      NOT NULL,
    tenant_id            uuid        NOT NULL,
    entry_id             uuid        NOT NULL,
    kind                 text        NOT NULL,
    amount_micros        bigint      NOT NULL,
    balance_after_micros bigint      NOT NULL,
    currency             text,
    description          text        NOT NULL,
    reference            text,
    actor                text,
    product              text,
    quantity             bigint,
    occurred_at          timestamptz NOT NULL,
    version              bigint      NOT NULL,
    PRIMARY KEY (account_id, entry_seq)
);
CREATE INDEX IF NOT EXISTS statement_entries_kind ON statement_entries (account_id, kind, entry_seq);

-- Billed usage per account, UTC day (of the line's occurred_at) and product. Months are sums
-- of days at query time.
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id    uuid   NOT NULL,
    day           date   NOT NULL,
    product       text   NOT NULL,
    tenant_id     uuid   NOT NULL,
    quantity      bigint NOT NULL,
    amount_micros bigint NOT NULL,
    lines         bigint NOT NULL,
    PRIMARY KEY (account_id, day, product)
);

-- Holds placed and not yet captured, released or expired.
CREATE TABLE IF NOT EXISTS open_holds (
    account_id    uuid        NOT NULL,
    hold_id       text        NOT NULL,
    tenant_id     uuid        NOT NULL,
    product       text        NOT NULL,
    quantity      bigint      NOT NULL,
    amount_micros bigint      NOT NULL,
    expires_at    timestamptz NOT NULL,
    placed_at     timestamptz NOT NULL,
    PRIMARY KEY (account_id, hold_id)
);

-- Portal reads run as ledger_reader (SET LOCAL ROLE inside their transaction) with the tenant
-- in the setting ledger.tenant_id. Row-level security is fail-closed: with no tenant set the
-- policy compares with NULL and a query sees no row. The service's own role owns the tables
-- and is not subject to the policies (the projector and ledgerctl read and write everything).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_reader') THEN
        CREATE ROLE ledger_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of the same cluster created it at the same moment
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'ledger_reader', 'MEMBER') THEN
        EXECUTE format('GRANT ledger_reader TO %I', current_user);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ledger_reader', current_schema());
END
$$;

GRANT SELECT ON balances, statement_entries, usage_daily, open_holds, projection_positions
    TO ledger_reader;

ALTER TABLE balances ENABLE ROW LEVEL SECURITY;
ALTER TABLE statement_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE open_holds ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON balances FOR SELECT TO ledger_reader
    USING (tenant_id = nullif(current_setting('ledger.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON statement_entries FOR SELECT TO ledger_reader
    USING (tenant_id = nullif(current_setting('ledger.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON usage_daily FOR SELECT TO ledger_reader
    USING (tenant_id = nullif(current_setting('ledger.tenant_id', true), '')::uuid);
CREATE POLICY tenant_isolation ON open_holds FOR SELECT TO ledger_reader
    USING (tenant_id = nullif(current_setting('ledger.tenant_id', true), '')::uuid);
