-- Every tenant policy evaluates chukan_tenant() once per statement (an InitPlan), as
-- replica_items' has since 0150: a query's ~20 statements called the SECURITY DEFINER
-- lookup behind it about 29 times, once per row compared.  Isolation is unchanged:
-- chukan_tenant() is STABLE, so within one statement it has one value, the one each
-- row was compared with before.  Tables isolated from now on (the record partitions
-- made each month) get the same policy.
CREATE OR REPLACE FUNCTION chukan_isolate(target regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s USING (tenant = (SELECT chukan_tenant())) '
        'WITH CHECK (tenant = (SELECT chukan_tenant()))', target);
END
$$;

DO $$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT format('%I.%I', schemaname, tablename)::regclass FROM pg_policies
        WHERE schemaname = 'public' AND policyname = 'tenant_isolation'
    LOOP
        EXECUTE format(
            'ALTER POLICY tenant_isolation ON %s USING (tenant = (SELECT chukan_tenant())) '
            'WITH CHECK (tenant = (SELECT chukan_tenant()))', target);
    END LOOP;
END
$$;
