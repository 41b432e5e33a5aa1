-- Events a projection could not apply, set aside so that the projection (and every other
-- account's rows) moves on. Only deterministic failures land here: a data error PostgreSQL
-- would raise again on every retry (text it cannot store, such as a NUL). A quarantined event
-- stays in the log, untouched; only the read model lacks it. `ledgerctl status` lists these
-- rows and `ledgerctl verify` fails while any exist; once the cause is fixed (in code),
-- `ledgerctl rebuild <projection>` re-applies the log and clears the projection's rows.
-- A rebuild records its own under '<name>__rebuild' until the swap, like its position.
CREATE TABLE IF NOT EXISTS projection_quarantine (
    projection     text        NOT NULL,
    position       bigint      NOT NULL,
    account_id     uuid,
    event_type     text        NOT NULL,
    error          text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, position)
);
