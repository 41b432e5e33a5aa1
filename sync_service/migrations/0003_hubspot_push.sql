-- HubSpot invoices: their jobs and the references of what was created there.
ALTER TABLE external_refs DROP CONSTRAINT external_refs_kind_check;
ALTER TABLE external_refs ADD CONSTRAINT external_refs_kind_check
    CHECK (kind IN ('contact', 'invoice', 'credit_note', 'payment', 'allocation', 'company',
                    'line_items', 'status'));
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_kind_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_kind_check
    CHECK (kind IN ('invoice', 'credit_note', 'payment', 'void', 'fetch_invoice',
                    'hubspot_invoice', 'hubspot_status'));
