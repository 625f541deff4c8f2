-- The tenant policy of replica_items evaluates chukan_tenant() once per statement (an
-- InitPlan), not once per row: the SECURITY DEFINER lookup behind it costs 10-20 µs a
-- call, which a bulk import paid for every inserted row (and a scan for every row read).
-- Isolation is unchanged: chukan_tenant() is STABLE, so within one statement it has one
-- value, the one each row was compared with before.
ALTER POLICY tenant_isolation ON replica_items
    USING (tenant = (SELECT chukan_tenant()))
    WITH CHECK (tenant = (SELECT chukan_tenant()));
