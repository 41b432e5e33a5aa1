-- Each change of a billing profile gets the next version, announced as
-- invoicing.v1.customer_updated (through the outbox) for the accounting and CRM systems.
ALTER TABLE billing_profiles ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;
