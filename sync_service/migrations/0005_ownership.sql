-- Which sync process drains which connection (sync_service/app/ownership.py, docs/sync.md
-- "Rate limits"): a connection's limits are Xero's (or HubSpot's) per organisation, so one
-- process at a time calls it, under a lease renewed every second. Times are the database's
-- clock, so processes on machines with skewed clocks agree.
CREATE TABLE connection_leases (
    connection_id text        PRIMARY KEY,
    owner         text,
    epoch         bigint      NOT NULL DEFAULT 0,   -- raised at every change of owner
    expires_at    timestamptz NOT NULL DEFAULT '-infinity',
    -- The owner's pacing as of pacing_at (bucket levels, pause left): the next owner
    -- starts from it, so a handover neither bursts past the limits nor forgets a 429.
    pacing        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    pacing_at     timestamptz NOT NULL DEFAULT now()
);

-- The sync processes alive now: a fair share is ceil(connections with work / live members).
CREATE TABLE sync_members (
    member       text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
