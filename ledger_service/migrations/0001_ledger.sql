-- The ledger's own tables beside the event store (which eventsourcing creates as
-- ledger_events / ledger_snapshots). Every row here is written in the SAME transaction as the
-- events it describes (see ledger_service/app/recorder.py), so none can disagree with the log.

-- Idempotency: one row per key that has had its effect. scope separates key spaces
-- (usage event ids, authorize request ids, payment ids, HTTP Idempotency-Key per route).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    account_id   uuid,
    request_hash text,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Where each statement entry (a money event, or one usage line of a batched event) lives in
-- the log: lets a refund find the debit it refunds without scanning an account's history.
CREATE TABLE IF NOT EXISTS entry_index (
    entry_id           uuid   PRIMARY KEY,
    account_id         uuid   NOT NULL,
    originator_version bigint NOT NULL,
    kind               text   NOT NULL
);
CREATE INDEX IF NOT EXISTS entry_index_account ON entry_index (account_id, originator_version);

-- Accounts with something due (a hold's TTL, a grant's expiry): the sweeper reads this
-- instead of loading every account.
CREATE TABLE IF NOT EXISTS expiry_schedule (
    account_id uuid        NOT NULL,
    due_at     timestamptz NOT NULL,
    PRIMARY KEY (account_id, due_at)
);
CREATE INDEX IF NOT EXISTS expiry_schedule_due ON expiry_schedule (due_at);

-- How far the publisher of ledger.v1.events.* has come through the notification log.
CREATE TABLE IF NOT EXISTS publisher_position (
    name            text   PRIMARY KEY,
    notification_id bigint NOT NULL
);
