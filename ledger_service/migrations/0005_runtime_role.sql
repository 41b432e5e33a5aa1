-- The group role a least-privilege runtime role joins (ledger_service/runtime_role.py,
-- docs/operations.md). Its table rights are kept equal to runtime_role.TABLE_RIGHTS by every
-- `migrate` (the event store's tables are made after these files run); here: the role, and
-- the row-level security policies that let it write the projections (row-level security
-- applies to every role but the tables' owner, and ledger_reader's policies only read).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_runtime') THEN
        CREATE ROLE ledger_runtime NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of the same cluster created it at the same moment
END
$$;

CREATE POLICY runtime_writes ON balances FOR ALL TO ledger_runtime USING (true) WITH CHECK (true);
CREATE POLICY runtime_writes ON statement_entries FOR ALL TO ledger_runtime
    USING (true) WITH CHECK (true);
CREATE POLICY runtime_writes ON usage_daily FOR ALL TO ledger_runtime
    USING (true) WITH CHECK (true);
CREATE POLICY runtime_writes ON open_holds FOR ALL TO ledger_runtime
    USING (true) WITH CHECK (true);
