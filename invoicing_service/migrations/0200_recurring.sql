-- Recurring items of invoicing_service (invoicing_service/recurring, issue 13): numbers and
-- keywords billed every month. Numbered 0200 so the invoicing core's migrations (0001-0099)
-- and the mailer's (0100) come first.

-- The products an item may be for, and how each is charged. Prices are the ledger's
-- (its catalogue and per-account overrides); this table says only which products recur,
-- which setup product is charged once at the start, and whether a partial month is
-- prorated by days (true) or charged whole (false).
CREATE TABLE recurring_products (
    product_key    text PRIMARY KEY CHECK (product_key ~ '^[a-z][a-z0-9_]{0,63}$'),
    kind           text NOT NULL CHECK (kind IN ('monthly', 'setup')),
    setup_product  text REFERENCES recurring_products (product_key),
    prorate        boolean NOT NULL DEFAULT true,
    description    text NOT NULL CHECK (length(description) BETWEEN 1 AND 200),
    CHECK (kind = 'monthly' OR setup_product IS NULL)
);
INSERT INTO recurring_products (product_key, kind, setup_product, prorate, description) VALUES
    ('vmn_setup', 'setup', NULL, false, 'Virtual mobile number: setup'),
    ('shortcode_keyword_setup', 'setup', NULL, false, 'Shortcode keyword: setup'),
    ('vmn', 'monthly', 'vmn_setup', true, 'Virtual mobile number: monthly rental'),
    ('shortcode_keyword', 'monthly', 'shortcode_keyword_setup', true,
     'Shortcode keyword: monthly rental');

CREATE TABLE recurring_items (
    item_id         uuid PRIMARY KEY,
    account_id      uuid NOT NULL,
    product         text NOT NULL REFERENCES recurring_products (product_key),
    quantity        integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    reference       text NOT NULL CHECK (length(reference) BETWEEN 1 AND 64),
    starts_on       date NOT NULL,
    ends_on         date CHECK (ends_on >= starts_on - 1),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'past_due', 'suspended', 'cancelled')),
    past_due_since  timestamptz,
    suspended_at    timestamptz,
    cancelled_at    timestamptz,
    -- Charges are planned (rows in recurring_charges) through this period: the planner
    -- skips an item already planned for the current month, so a tick reads only new work.
    planned_through text,
    -- The last time a renewal of this item was tried (the daily retry of past-due items).
    last_attempt_at timestamptz,
    -- A plan change (product, quantity) taking effect from a later period: the planner
    -- applies it when it plans that period; months before keep the old plan.
    pending_product  text REFERENCES recurring_products (product_key),
    pending_quantity integer CHECK (pending_quantity BETWEEN 1 AND 1000000),
    pending_from     text CHECK (pending_from ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'past_due') <= (past_due_since IS NOT NULL)),
    CHECK ((pending_from IS NULL) = (pending_product IS NULL)
           AND (pending_from IS NULL) = (pending_quantity IS NULL)),
    CHECK ((status = 'suspended') <= (suspended_at IS NOT NULL))
);
-- A number or keyword belongs to one live item at a time.
CREATE UNIQUE INDEX recurring_items_live_reference ON recurring_items (product, reference)
    WHERE status <> 'cancelled';
CREATE INDEX recurring_items_by_account ON recurring_items (account_id, created_at DESC);
CREATE INDEX recurring_items_to_plan ON recurring_items (planned_through, item_id)
    WHERE status <> 'cancelled';
CREATE INDEX recurring_items_owing ON recurring_items (status, last_attempt_at)
    WHERE status IN ('past_due', 'suspended');

-- Append-only history of each item, written in the transaction that changes the item.
CREATE TABLE recurring_item_events (
    event_seq    bigserial PRIMARY KEY,
    item_id      uuid NOT NULL REFERENCES recurring_items (item_id),
    account_id   uuid NOT NULL,
    kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z_]{0,39}$'),
    data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recurring_item_events_by_item ON recurring_item_events (item_id, event_seq);
CREATE FUNCTION recurring_item_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'recurring_item_events is append-only';
END $$;
CREATE TRIGGER recurring_item_events_append_only BEFORE UPDATE OR DELETE
    ON recurring_item_events FOR EACH ROW EXECUTE FUNCTION recurring_item_events_append_only();

-- One row per item and period ('setup' or 'YYYY-MM'): the renewal's state here, and the
-- ledger's charge key recurring:<item_id>:<period> there, make it exactly once.
-- pending -> charged | refused (insufficient funds; retried) | failed (the ledger refused
-- it for good: unknown account or product, closed account).
CREATE TABLE recurring_charges (
    item_id          uuid NOT NULL REFERENCES recurring_items (item_id),
    period           text NOT NULL CHECK (period ~ '^(setup|[0-9]{4}-(0[1-9]|1[0-2]))$'),
    account_id       uuid NOT NULL,
    product          text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    days             smallint CHECK (days BETWEEN 1 AND 31),
    days_in_period   smallint CHECK (days_in_period BETWEEN 28 AND 31),
    due_on           date NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'charged', 'refused', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT '2000-01-01T00:00:00Z',
    entry_id         text,
    amount           text,
    currency         text,
    last_error       text CHECK (length(last_error) <= 500),
    charged_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, period),
    CHECK ((status = 'charged') = (entry_id IS NOT NULL AND charged_at IS NOT NULL)),
    CHECK ((days IS NULL) = (days_in_period IS NULL))
);
-- The renewal run's walk over what is still to charge (small: pending rows only).
CREATE INDEX recurring_charges_pending ON recurring_charges (item_id, due_on)
    WHERE status = 'pending';
CREATE INDEX recurring_charges_by_account ON recurring_charges (account_id, due_on);

-- Idempotency-Key of POST /v1/accounts/{id}/recurring-items.
CREATE TABLE recurring_requests (
    scope         text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    response      bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- The service's message outbox (services/outbox.py OUTBOX_DDL), IF NOT EXISTS: the invoicing
-- core creates the same table for invoicing.v1.issued & co.; whichever runs first makes it.
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
