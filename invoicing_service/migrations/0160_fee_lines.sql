-- Recurring fees the ledger charged (entry_posted kind `fee`: a number's monthly rental, a
-- keyword's setup) are invoiced to postpay accounts beside their usage, one line per item.
ALTER TABLE usage_lines ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'usage'
    CHECK (kind IN ('usage', 'fee'));
ALTER TABLE usage_lines ADD COLUMN IF NOT EXISTS reference text;
