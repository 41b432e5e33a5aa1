-- Anchors: signed checkpoints of the log (ledger_service/anchors.py). The rows here are a
-- working copy: the proof is the copy outside the database (the ANCHORS stream and the file an
-- operator archives), which `ledgerctl verify --anchors FILE` checks the log against.
CREATE TABLE IF NOT EXISTS anchors (
    anchor_id    text        PRIMARY KEY,
    position     bigint      NOT NULL UNIQUE,
    body         bytea       NOT NULL,          -- the LedgerAnchor message, as published
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS anchors_unpublished ON anchors (position) WHERE published_at IS NULL;

-- Every account's chain head as of the newest anchor: lets the next anchor read only the events
-- since (verify never trusts it; it recomputes heads from the log).
CREATE TABLE IF NOT EXISTS anchor_heads (
    account_id         uuid   PRIMARY KEY,
    originator_version bigint NOT NULL,
    chain_hash         text   NOT NULL
);
