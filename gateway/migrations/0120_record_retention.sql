-- Retention of the 情報提供等記録: kept seven years (the statutory period), then disposed of
-- a monthly partition at a time, the chain staying verifiable from the boundary on.
--
-- * A partition is disposed of only once its whole month is older than the retention
--   (never less than seven years: the function refuses a shorter one, whoever calls it).
-- * Every tenant with records in it needs a signed checkpoint at or beyond its last record
--   there: that checkpoint becomes the tenant's chain base (record_chain_bases), from which
--   `records verify` walks.  A partition some tenant's checkpoint does not cover yet is
--   kept, and so is every later one (the disposed months stay contiguous).
-- * record_chain_bases is append-only like the records; `verify` trusts a base only when
--   a signed checkpoint at its seq has its hash and its month is past retention, so a
--   superuser who drops a recent partition and writes a base is still caught.
-- * Partitions are shared by every tenant of the database, so the disposal is one
--   SECURITY DEFINER function, serialised with partition creation by the same lock.

CREATE TABLE record_chain_bases (
    tenant               text NOT NULL DEFAULT chukan_tenant(),
    seq                  bigint NOT NULL,
    hash                 bytea NOT NULL,
    checkpoint_signed_at timestamptz NOT NULL,
    partition_name       text NOT NULL,
    disposed_through     timestamptz NOT NULL,
    records              bigint NOT NULL,
    disposed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, partition_name)
);
CREATE INDEX record_chain_bases_seq ON record_chain_bases (tenant, seq);

CREATE TRIGGER record_chain_bases_append_only BEFORE UPDATE OR DELETE ON record_chain_bases
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER record_chain_bases_no_truncate BEFORE TRUNCATE ON record_chain_bases
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();

REVOKE ALL ON record_chain_bases FROM chukan_app;
GRANT SELECT ON record_chain_bases TO chukan_app;
SELECT chukan_isolate('record_chain_bases');

-- The disposal runs as the owner for every tenant: it reads all tenants' checkpoints and
-- writes their bases (tenant roles are never members of the owner).
CREATE POLICY owner_maintenance ON record_checkpoints TO CURRENT_USER USING (true);
CREATE POLICY owner_maintenance ON record_chain_bases TO CURRENT_USER
    USING (true) WITH CHECK (true);

CREATE FUNCTION chukan_dispose_record_partitions(retention interval)
    RETURNS TABLE (partition_name text, tenant text, base_seq bigint, records bigint,
                   disposed_through timestamptz, status text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    cutoff timestamptz;
    part record;
    stats record;
    base record;
    blocked boolean;
BEGIN
    IF retention IS NULL OR retention < interval '7 years' THEN
        RAISE EXCEPTION 'records are kept at least seven years, not %', retention
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - retention;
    PERFORM pg_advisory_xact_lock(hashtext('chukan_record_partitions'));
    FOR part IN
        SELECT c.oid::regclass AS rel, c.relname::text AS name,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'provision_records'::regclass
          AND c.relname <> 'provision_records_default'
        ORDER BY 3
    LOOP
        EXIT WHEN part.upper_bound IS NULL OR part.upper_bound > cutoff;
        -- The partition's rows of every tenant (it is dropped below, or forced again).
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', part.rel);
        blocked := false;
        FOR stats IN EXECUTE format(
                'SELECT p.tenant, max(p.seq) AS last_seq, count(*) AS n FROM %s p '
                'GROUP BY p.tenant ORDER BY p.tenant', part.rel) LOOP
            SELECT cp.seq, cp.hash, cp.signed_at INTO base FROM record_checkpoints cp
                WHERE cp.tenant = stats.tenant AND cp.seq >= stats.last_seq
                ORDER BY cp.seq LIMIT 1;
            IF NOT FOUND THEN
                blocked := true;
                partition_name := part.name; tenant := stats.tenant; base_seq := NULL;
                records := stats.n; disposed_through := part.upper_bound;
                status := 'no_checkpoint';
                RETURN NEXT;
            END IF;
        END LOOP;
        IF blocked THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', part.rel);
            EXIT;
        END IF;
        FOR stats IN EXECUTE format(
                'SELECT p.tenant, max(p.seq) AS last_seq, count(*) AS n FROM %s p '
                'GROUP BY p.tenant ORDER BY p.tenant', part.rel) LOOP
            SELECT cp.seq, cp.hash, cp.signed_at INTO base FROM record_checkpoints cp
                WHERE cp.tenant = stats.tenant AND cp.seq >= stats.last_seq
                ORDER BY cp.seq LIMIT 1;
            INSERT INTO record_chain_bases AS b (tenant, seq, hash, checkpoint_signed_at,
                    partition_name, disposed_through, records)
                VALUES (stats.tenant, base.seq, base.hash, base.signed_at, part.name,
                        part.upper_bound, stats.n);
            partition_name := part.name; tenant := stats.tenant; base_seq := base.seq;
            records := stats.n; disposed_through := part.upper_bound; status := 'disposed';
            RETURN NEXT;
        END LOOP;
        EXECUTE format('ALTER TABLE provision_records DETACH PARTITION %s', part.rel);
        EXECUTE format('DROP TABLE %s', part.rel);
        partition_name := part.name; tenant := NULL; base_seq := NULL; records := NULL;
        disposed_through := part.upper_bound; status := 'dropped';
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION chukan_dispose_record_partitions(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chukan_dispose_record_partitions(interval) TO chukan_app;
