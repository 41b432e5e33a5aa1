-- Ownership of the ledger's account partitions (ledger_service/partitions.py, docs/scaling.md).
-- One row per partition: who applies its accounts' usage and authorizations, under which
-- fencing epoch (raised at every change of owner), until when. Times are the database's
-- clock, so processes on machines with skewed clocks agree.
CREATE TABLE IF NOT EXISTS partition_leases (
    partition  integer     PRIMARY KEY,
    owner      text,
    epoch      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

-- The ledger processes alive now: each renews its row with its leases; a fair share is
-- ceil(partitions / live members). The oldest live member runs the followers.
CREATE TABLE IF NOT EXISTS partition_members (
    member       text        PRIMARY KEY,
    partitions   integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
