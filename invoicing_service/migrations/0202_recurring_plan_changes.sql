-- Plan changes effective at once, with proration (issue 13, "or immediately with proration,
-- by setting").

-- Per product: a change of plan takes effect from the next period (the default) or at once
-- with proration, when the request does not say which.
ALTER TABLE recurring_products ADD COLUMN IF NOT EXISTS plan_change text NOT NULL
    DEFAULT 'next_period' CHECK (plan_change IN ('next_period', 'now'));

-- The unit price the ledger froze in each charge: an immediate change credits the unused
-- days of the period at the price that was charged, not today's.
ALTER TABLE recurring_charges ADD COLUMN IF NOT EXISTS unit_price text;

-- One row per immediate change: the credit back of the unused days of the plan being left
-- and the charge of the new plan for the rest of the period, each a ledger entry with its
-- own key, recorded in the transaction that changes the item.
CREATE TABLE IF NOT EXISTS recurring_plan_changes (
    change_id        uuid PRIMARY KEY,
    item_id          uuid NOT NULL REFERENCES recurring_items (item_id),
    account_id       uuid NOT NULL,
    period           text NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    effective_on     date NOT NULL,
    from_product     text NOT NULL,
    from_quantity    integer NOT NULL CHECK (from_quantity > 0),
    to_product       text NOT NULL,
    to_quantity      integer NOT NULL CHECK (to_quantity > 0),
    -- the credit: the segment's charge less its used days at its own unit price
    credit_micros    bigint NOT NULL CHECK (credit_micros >= 0),
    credit_entry_id  text,
    -- the new plan's charge for effective_on to the period's end (days of days_in_period)
    entry_id         text NOT NULL,
    amount           text NOT NULL,
    unit_price       text NOT NULL,
    currency         text NOT NULL,
    days             smallint CHECK (days BETWEEN 1 AND 31),
    days_in_period   smallint CHECK (days_in_period BETWEEN 28 AND 31),
    actor            text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((days IS NULL) = (days_in_period IS NULL)),
    CHECK (credit_micros = 0 OR credit_entry_id IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS recurring_plan_changes_by_item
    ON recurring_plan_changes (item_id, created_at);

-- The renewal run walks the pending charges in account order (an account's items share a
-- batch and a ledger call).
CREATE INDEX IF NOT EXISTS recurring_charges_pending_by_account
    ON recurring_charges (account_id, item_id) WHERE status = 'pending';
