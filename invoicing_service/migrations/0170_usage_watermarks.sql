-- Billed-up-to watermarks instead of per-line billed marks (docs/invoicing.md, "Billing
-- runs"). A billing run's invoice no longer writes every usage line it bills (two writes per
-- line, most of a run's cost); it records one watermark per account and currency: "every
-- line of this account and currency that arrived up to `through_seq` and belongs to a period
-- up to `through_period` is billed by this invoice, unless an earlier watermark billed it".

-- Arrival order of usage lines. A statement-level trigger takes a shared lock on the intake
-- gate before any row of the statement is formed, so before its column default draws the
-- number; a billing run reads the sequence under the exclusive lock
-- (`usage_arrived_through()`): every line numbered up to what the run read has committed (or
-- rolled back) by then, and every later line gets a larger number. A line is never numbered
-- below a watermark after the watermark was read. (Never insert `seq` explicitly.)
CREATE SEQUENCE IF NOT EXISTS usage_lines_seq AS bigint;
ALTER TABLE usage_lines ADD COLUMN IF NOT EXISTS seq bigint;
UPDATE usage_lines SET seq = nextval('usage_lines_seq') WHERE seq IS NULL;
ALTER TABLE usage_lines ALTER COLUMN seq SET DEFAULT nextval('usage_lines_seq');
ALTER TABLE usage_lines ALTER COLUMN seq SET NOT NULL;
CREATE INDEX IF NOT EXISTS usage_lines_arrival ON usage_lines (account_id, currency, seq);

CREATE OR REPLACE FUNCTION usage_intake_gate() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext(current_schema() || ':usage-intake'));
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS usage_lines_gate ON usage_lines;
CREATE TRIGGER usage_lines_gate BEFORE INSERT ON usage_lines
    FOR EACH STATEMENT EXECUTE FUNCTION usage_intake_gate();

-- The highest arrival number whose line is visible to every later statement: waits for
-- the lines being recorded now, then reads the sequence (call it alone in its transaction;
-- the lock is released at its commit, an instant later).
CREATE OR REPLACE FUNCTION usage_arrived_through() RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    last bigint;
    called boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || ':usage-intake'));
    SELECT last_value, is_called INTO last, called FROM usage_lines_seq;
    RETURN CASE WHEN called THEN last ELSE 0 END;
END
$$;

-- One row per invoice a billing run issued (with its events, same transaction). Per account
-- and currency the rows form a chain (`previous_id`, 0 for the first): two issuers that read
-- the same head cannot both commit (unique violation), so a line is billed at most once.
CREATE TABLE IF NOT EXISTS usage_watermarks (
    watermark_id   bigserial   PRIMARY KEY,
    invoice_id     uuid        NOT NULL UNIQUE,
    account_id     uuid        NOT NULL,
    currency       text        NOT NULL,
    through_seq    bigint      NOT NULL CHECK (through_seq >= 0),
    through_period text        NOT NULL,
    previous_id    bigint      NOT NULL,
    UNIQUE (account_id, currency, previous_id)
);
CREATE INDEX IF NOT EXISTS usage_watermarks_cover
    ON usage_watermarks (account_id, currency, through_seq);

-- Which invoice billed each usage line (NULL: not billed yet): a per-line mark of the old
-- design, else the first watermark (in issue order) that covers the line.
CREATE OR REPLACE VIEW usage_lines_billing AS
SELECT u.*, coalesce(u.invoiced_on, (
           SELECT w.invoice_id FROM usage_watermarks w
            WHERE w.account_id = u.account_id AND w.currency = u.currency
              AND w.through_seq >= u.seq AND w.through_period >= u.period
            ORDER BY w.watermark_id LIMIT 1)) AS billed_by
  FROM usage_lines u;

-- The old per-line marks (InvoiceOrder.billed_usage, kept for callers other than runs) now
-- also refuse a line a watermark billed.
CREATE OR REPLACE FUNCTION bill_usage(p_entries uuid[], p_invoices uuid[])
RETURNS bigint LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    marked bigint;
BEGIN
    UPDATE usage_lines u SET invoiced_on = b.invoice_id
        FROM unnest(p_entries, p_invoices) AS b(entry_id, invoice_id)
        WHERE u.entry_id = b.entry_id AND u.invoiced_on IS NULL
          AND NOT EXISTS (SELECT 1 FROM usage_watermarks w
                           WHERE w.account_id = u.account_id AND w.currency = u.currency
                             AND w.through_seq >= u.seq AND w.through_period >= u.period);
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked <> cardinality(p_entries) THEN
        RAISE EXCEPTION '% of % usage lines were billed already', cardinality(p_entries) - marked,
            cardinality(p_entries) USING ERRCODE = 'unique_violation';
    END IF;
    RETURN marked;
END
$$;
