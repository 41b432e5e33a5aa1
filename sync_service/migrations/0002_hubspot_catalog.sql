-- HubSpot: each price list published from the product catalogue, and the pull's health.

CREATE TABLE catalog_versions (
    version        text PRIMARY KEY,
    content_hash   text NOT NULL,
    products       integer NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX catalog_versions_latest ON catalog_versions (published_at DESC);

CREATE TABLE target_health (
    target           text PRIMARY KEY CHECK (target IN ('xero', 'hubspot')),
    last_attempt_at  timestamptz,
    last_success_at  timestamptz,
    last_error       text,
    rejected_rows    integer NOT NULL DEFAULT 0,
    credentials_refused boolean NOT NULL DEFAULT false
);
