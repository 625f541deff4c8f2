-- 情報提供等記録 (provision records), append-only and tamper-evident.
--
-- * The table of 0001 is replaced by one partitioned by month on recorded_at;
--   its rows are moved (and chained) here.  A default partition catches rows
--   for months whose partition was not created ahead, so an insert never fails.
-- * Append-only: tenant roles may INSERT only the content columns (never seq,
--   hashes or recorded_at) and have no UPDATE/DELETE/TRUNCATE; a trigger refuses
--   UPDATE, DELETE and TRUNCATE to everyone else too, the owner included.
-- * Hash chain per tenant: a BEFORE INSERT trigger locks the tenant's chain
--   head (one row in record_chain_heads), numbers the record (seq) and sets
--   hash = sha256(prev_hash || canonical content).  The lock lives until the
--   inserting transaction commits, so concurrent writers (several gateway
--   processes of one tenant) extend one chain, in commit order.  No extra round
--   trip: the application only INSERTs.
-- * record_checkpoints: (seq, hash) signed by the agency's Ed25519 key every N
--   records or T seconds (chukan.gateway.records).
--
-- The canonical form is defined twice, here and in chukan.gateway.records
-- (canonical_record); tests hold them to the same bytes.

ALTER TABLE provision_records RENAME TO provision_records_0001;
ALTER SEQUENCE provision_records_id_seq RENAME TO provision_records_0001_id_seq;
ALTER INDEX provision_records_person RENAME TO provision_records_0001_person;
ALTER TABLE provision_records_0001
    RENAME CONSTRAINT provision_records_pkey TO provision_records_0001_pkey;
ALTER TABLE provision_records_0001
    RENAME CONSTRAINT provision_records_tenant_role_query_id_key TO provision_records_0001_key;

CREATE TABLE provision_records (
    id             bigserial,
    tenant         text NOT NULL DEFAULT chukan_tenant(),
    seq            bigint NOT NULL,
    role           text NOT NULL CHECK (role IN ('requester', 'provider')),
    query_id       text NOT NULL,
    permit_id      text,
    requester      text NOT NULL,
    provider       text NOT NULL,
    business_code  text NOT NULL,
    procedure_code text NOT NULL,
    item_code      text NOT NULL,
    legal_basis    integer,
    atena_id       text,
    requested_at   timestamptz NOT NULL,
    provided_at    timestamptz,
    outcome        text NOT NULL CHECK (outcome IN ('provided', 'refused', 'held', 'failed')),
    reason_code    text,
    non_disclosure boolean NOT NULL DEFAULT false,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    prev_hash      bytea NOT NULL,
    hash           bytea NOT NULL,
    PRIMARY KEY (tenant, id, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE INDEX provision_records_chain ON provision_records (tenant, seq);
CREATE INDEX provision_records_person ON provision_records (tenant, atena_id);
CREATE INDEX provision_records_query ON provision_records (tenant, query_id);

CREATE TABLE provision_records_default PARTITION OF provision_records DEFAULT;

-- One row per tenant: the last record of its chain.
CREATE TABLE record_chain_heads (
    tenant     text PRIMARY KEY DEFAULT chukan_tenant(),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints: the agency vouches for the chain up to seq.
CREATE TABLE record_checkpoints (
    tenant     text NOT NULL DEFAULT chukan_tenant(),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text NOT NULL,
    public_key bytea NOT NULL,
    signature  bytea NOT NULL,
    PRIMARY KEY (tenant, seq)
);

-- The first prev_hash of a tenant's chain: bound to the tenant, so chains cannot be swapped.
CREATE FUNCTION chukan_chain_genesis(tenant text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT sha256(convert_to('chukan-record-v1|genesis|' || tenant, 'UTF8')) $$;

-- name:length:value; (length in UTF-8 bytes) or name:-; for NULL: unambiguous.
CREATE FUNCTION chukan_canon(name text, value text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT name || ':' || CASE WHEN value IS NULL THEN '-'
                 ELSE octet_length(convert_to(value, 'UTF8')) || ':' || value END || ';' $$;

CREATE FUNCTION chukan_canon_ts(value timestamptz) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE FUNCTION chukan_record_canonical(r provision_records) RETURNS bytea
    LANGUAGE sql STABLE
    AS $$ SELECT convert_to('chukan-record-v1;'
        || chukan_canon('tenant', r.tenant)
        || chukan_canon('seq', r.seq::text)
        || chukan_canon('role', r.role)
        || chukan_canon('query_id', r.query_id)
        || chukan_canon('permit_id', r.permit_id)
        || chukan_canon('requester', r.requester)
        || chukan_canon('provider', r.provider)
        || chukan_canon('business_code', r.business_code)
        || chukan_canon('procedure_code', r.procedure_code)
        || chukan_canon('item_code', r.item_code)
        || chukan_canon('legal_basis', r.legal_basis::text)
        || chukan_canon('atena_id', r.atena_id)
        || chukan_canon('requested_at', chukan_canon_ts(r.requested_at))
        || chukan_canon('provided_at', chukan_canon_ts(r.provided_at))
        || chukan_canon('outcome', r.outcome)
        || chukan_canon('reason_code', r.reason_code)
        || chukan_canon('non_disclosure', CASE WHEN r.non_disclosure THEN 'true' ELSE 'false' END)
        || chukan_canon('recorded_at', chukan_canon_ts(r.recorded_at)), 'UTF8') $$;

-- SECURITY DEFINER: tenant roles cannot touch the chain heads themselves.
CREATE FUNCTION chukan_chain_record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    head record;
BEGIN
    SELECT h.seq, h.hash INTO head FROM record_chain_heads h
        WHERE h.tenant = NEW.tenant FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO record_chain_heads (tenant, seq, hash)
            VALUES (NEW.tenant, 0, chukan_chain_genesis(NEW.tenant))
            ON CONFLICT (tenant) DO NOTHING;
        SELECT h.seq, h.hash INTO head FROM record_chain_heads h
            WHERE h.tenant = NEW.tenant FOR UPDATE;
    END IF;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := sha256(head.hash || chukan_record_canonical(NEW));
    UPDATE record_chain_heads SET seq = NEW.seq, hash = NEW.hash, updated_at = now()
        WHERE tenant = NEW.tenant;
    RETURN NEW;
END
$$;

CREATE FUNCTION chukan_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER provision_records_chain BEFORE INSERT ON provision_records
    FOR EACH ROW EXECUTE FUNCTION chukan_chain_record();
CREATE TRIGGER provision_records_append_only BEFORE UPDATE OR DELETE ON provision_records
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER provision_records_no_truncate BEFORE TRUNCATE ON provision_records
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER record_checkpoints_append_only BEFORE UPDATE OR DELETE ON record_checkpoints
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER record_checkpoints_no_truncate BEFORE TRUNCATE ON record_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();

-- A partition is reached only through the parent (whose policy isolates tenants):
-- tenant roles get no privilege on it, and it carries the same policy besides.
CREATE FUNCTION chukan_protect_record_partition(part regclass) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON %s FROM chukan_app', part);
    PERFORM chukan_isolate(part);
    EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only()', part);
END
$$;

-- Monthly partitions from the month of `start` for `months` months; returns the names
-- created.  A month whose rows already went to the default partition is left there
-- (still read and chained through the parent).  Idempotent; safe to run concurrently.
CREATE FUNCTION chukan_ensure_record_partitions(start date, months integer)
    RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
DECLARE
    first date := date_trunc('month', start)::date;
    lower_bound date;
    part text;
BEGIN
    IF months < 1 OR months > 120 THEN
        RAISE EXCEPTION 'months must be between 1 and 120';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('chukan_record_partitions'));
    FOR i IN 0 .. months - 1 LOOP
        lower_bound := (first + make_interval(months => i))::date;
        part := format('provision_records_p%s', to_char(lower_bound, 'YYYYMM'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM provision_records_default
            WHERE recorded_at >= lower_bound::timestamp AT TIME ZONE 'UTC'
              AND recorded_at < (lower_bound + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        EXECUTE format(
            'CREATE TABLE public.%I PARTITION OF public.provision_records '
            'FOR VALUES FROM (%L) TO (%L)',
            part, lower_bound::timestamp AT TIME ZONE 'UTC',
            (lower_bound + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        PERFORM chukan_protect_record_partition(part::regclass);
        RETURN NEXT part;
    END LOOP;
END
$$;

-- Privileges: read everything of one's tenant; insert content columns only.
REVOKE ALL ON provision_records FROM chukan_app;
GRANT SELECT ON provision_records TO chukan_app;
GRANT INSERT (role, query_id, permit_id, requester, provider, business_code, procedure_code,
              item_code, legal_basis, atena_id, requested_at, provided_at, outcome,
              reason_code, non_disclosure)
    ON provision_records TO chukan_app;
REVOKE ALL ON record_chain_heads FROM chukan_app;
GRANT SELECT ON record_chain_heads TO chukan_app;
REVOKE ALL ON record_checkpoints FROM chukan_app;
GRANT SELECT, INSERT ON record_checkpoints TO chukan_app;
GRANT EXECUTE ON FUNCTION chukan_ensure_record_partitions(date, integer) TO chukan_app;

SELECT chukan_isolate(t) FROM unnest(ARRAY[
    'provision_records', 'record_chain_heads', 'record_checkpoints']::regclass[]) AS t;
SELECT chukan_protect_record_partition('provision_records_default');

-- Partitions around now, then the rows of 0001 in their original order (chained here).
SELECT chukan_ensure_record_partitions((now() - interval '1 month')::date, 4);
SELECT chukan_ensure_record_partitions(m::date, 1)
    FROM (SELECT DISTINCT date_trunc('month', recorded_at AT TIME ZONE 'UTC') AS m
          FROM provision_records_0001) AS months;
INSERT INTO provision_records (id, tenant, role, query_id, permit_id, requester, provider,
        business_code, procedure_code, item_code, legal_basis, atena_id, requested_at,
        provided_at, outcome, reason_code, non_disclosure, recorded_at)
    SELECT id, tenant, role, query_id, permit_id, requester, provider, business_code,
           procedure_code, item_code, legal_basis, atena_id, requested_at, provided_at,
           outcome, reason_code, non_disclosure, recorded_at
    FROM provision_records_0001 ORDER BY id;
SELECT setval('provision_records_id_seq',
              GREATEST((SELECT max(id) FROM provision_records), 1));
DROP TABLE provision_records_0001;
