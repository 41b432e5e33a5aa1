-- What the accounting and CRM systems show of a customer (invoicing.v1.customer_updated):
-- the latest version per account, and the jobs that bring Xero's contact and HubSpot's
-- company up to date with it.
CREATE TABLE customers (
    account_id     uuid PRIMARY KEY,
    version        bigint NOT NULL,
    legal_name     text NOT NULL,
    address_lines  text[] NOT NULL,
    country        text,
    billing_email  text,
    vat_number     text,
    updated_at     timestamptz NOT NULL
);
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_kind_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_kind_check
    CHECK (kind IN ('invoice', 'credit_note', 'payment', 'void', 'fetch_invoice',
                    'hubspot_invoice', 'hubspot_status', 'contact', 'hubspot_company'));
