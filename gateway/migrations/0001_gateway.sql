-- An agency's intermediate server (中間サーバー).  The 個人番号 is never stored:
-- people are keyed by 団体内統合宛名番号 (atena_id) and bound to this agency's 符号.
--
-- Tenancy: one database can serve several agencies.  Every table carries a
-- `tenant` column filled from chukan_tenant(), the tenant of the *login* role
-- (session_user, which a session cannot change), and row-level security keeps
-- each tenant's rows invisible to the others — whatever SQL a session runs.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chukan_app') THEN
        CREATE ROLE chukan_app NOLOGIN;
    END IF;
END
$$;

CREATE TABLE tenants (
    tenant     text PRIMARY KEY CHECK (tenant ~ '^[0-9]{6}([0-9]{10})?$'),
    name       text NOT NULL,
    role_name  name NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- SECURITY DEFINER: tenant roles have no access to `tenants` itself.
CREATE FUNCTION chukan_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT tenant FROM public.tenants WHERE role_name = session_user $$;

-- Turn on isolation for a tenant table: the same policy everywhere.
CREATE FUNCTION chukan_isolate(target regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', target);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', target);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s USING (tenant = chukan_tenant()) '
        'WITH CHECK (tenant = chukan_tenant())', target);
END
$$;

ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO chukan_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO chukan_app;
REVOKE ALL ON tenants FROM chukan_app;
GRANT EXECUTE ON FUNCTION chukan_tenant() TO chukan_app;

CREATE TABLE persons (
    tenant        text NOT NULL DEFAULT chukan_tenant(),
    atena_id      text NOT NULL,
    person_code   text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, atena_id),
    UNIQUE (tenant, person_code)
);

-- 副本: versioned items per person and 特定個人情報名.
CREATE TABLE replica_items (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL DEFAULT chukan_tenant(),
    atena_id       text NOT NULL,
    item_code      text NOT NULL,
    version        integer NOT NULL,
    content        bytea NOT NULL,
    digest         text NOT NULL,
    manual_review  boolean NOT NULL DEFAULT false,
    valid_from     timestamptz NOT NULL DEFAULT now(),
    valid_to       timestamptz,
    stored_by      text NOT NULL,
    UNIQUE (tenant, atena_id, item_code, version),
    FOREIGN KEY (tenant, atena_id) REFERENCES persons (tenant, atena_id)
);
CREATE INDEX replica_items_current ON replica_items (tenant, atena_id, item_code)
    WHERE valid_to IS NULL;

-- Outgoing queries (情報照会) and their results until collected or expired.
CREATE TABLE queries (
    tenant         text NOT NULL DEFAULT chukan_tenant(),
    query_id       text NOT NULL,
    atena_id       text NOT NULL,
    provider       text NOT NULL,
    business_code  text NOT NULL,
    procedure_code text NOT NULL,
    item_code      text NOT NULL,
    legal_basis    integer,
    reference_date date,
    status         text NOT NULL CHECK (status IN
                     ('queued', 'sent', 'answered', 'refused', 'failed')),
    reason_code    text,
    reason_message text,
    permit_id      text,
    result         bytea,
    submitted_by   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    answered_at    timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant, query_id),
    FOREIGN KEY (tenant, atena_id) REFERENCES persons (tenant, atena_id)
);
CREATE INDEX queries_queued ON queries (tenant, created_at) WHERE status = 'queued';

-- Permits already used (情報提供許可証 are single use); kept until they expire.
CREATE TABLE used_permits (
    tenant     text NOT NULL DEFAULT chukan_tenant(),
    permit_id  text NOT NULL,
    query_id   text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, permit_id)
);

-- Network message ids seen, against replays of signed messages.
CREATE TABLE seen_messages (
    tenant      text NOT NULL DEFAULT chukan_tenant(),
    message_id  text NOT NULL,
    sender      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, message_id)
);

-- 情報提供等記録: one row per query made (role requester) or answered (role provider).
CREATE TABLE provision_records (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL DEFAULT chukan_tenant(),
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
    outcome        text NOT NULL CHECK (outcome IN ('provided', 'refused', 'held')),
    reason_code    text,
    non_disclosure boolean NOT NULL DEFAULT false,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, role, query_id)
);
CREATE INDEX provision_records_person ON provision_records (tenant, atena_id);

-- Refused calls to the internal API, with the caller's identity (never a secret).
CREATE TABLE access_refusals (
    id         bigserial PRIMARY KEY,
    tenant     text NOT NULL DEFAULT chukan_tenant(),
    caller     text,
    operation  text NOT NULL,
    status     integer NOT NULL,
    code       text NOT NULL,
    remote     text,
    refused_at timestamptz NOT NULL DEFAULT now()
);

SELECT chukan_isolate(t) FROM unnest(ARRAY[
    'persons', 'replica_items', 'queries', 'used_permits', 'seen_messages',
    'provision_records', 'access_refusals']::regclass[]) AS t;
