-- 職員認証・権限管理: staff accounts, sessions and an append-only audit trail;
-- and what the result-deletion job needs on queries.

-- collected_at: when a final result was first fetched (the retention clock starts);
-- result_deleted_at: when the deletion job removed the result bytes.
ALTER TABLE queries ADD COLUMN collected_at timestamptz;
ALTER TABLE queries ADD COLUMN result_deleted_at timestamptz;
ALTER TABLE queries ADD COLUMN non_disclosure boolean NOT NULL DEFAULT false;
CREATE INDEX queries_expiry ON queries (tenant, expires_at);
CREATE INDEX queries_collected ON queries (tenant, collected_at) WHERE result IS NOT NULL;

CREATE TABLE staff_accounts (
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    username        text NOT NULL CHECK (username ~ '^[a-z][a-z0-9._-]{1,63}$'),
    display_name    text NOT NULL DEFAULT '',
    roles           text[] NOT NULL
                      CHECK (roles <@ ARRAY['operator', 'approver', 'auditor', 'admin']
                             AND cardinality(roles) > 0),
    -- scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>: parameters travel with the hash.
    password_hash   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    revoked_by      text,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    last_login_at   timestamptz,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, username)
);

-- Opaque bearer tokens, stored as SHA-256 digests only.
CREATE TABLE staff_sessions (
    tenant        text NOT NULL DEFAULT chukan_tenant(),
    token_sha256  bytea NOT NULL,
    username      text NOT NULL,
    remote        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    end_reason    text CHECK (end_reason IN ('logout', 'idle', 'lifetime', 'revoked', 'expired')),
    PRIMARY KEY (tenant, token_sha256),
    FOREIGN KEY (tenant, username) REFERENCES staff_accounts (tenant, username)
);
CREATE INDEX staff_sessions_live ON staff_sessions (tenant, username) WHERE ended_at IS NULL;

-- Who did what, when, from where: staff operations, logins, refusals, and the
-- administrative CLI.  Append-only like the provision records.
CREATE TABLE audit_trail (
    id         bigserial,
    tenant     text NOT NULL DEFAULT chukan_tenant(),
    at         timestamptz NOT NULL DEFAULT now(),
    actor_kind text NOT NULL CHECK (actor_kind IN ('staff', 'system', 'cli', 'gateway')),
    actor      text,
    action     text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{1,63}$'),
    target     text,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    remote     text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX audit_trail_actor ON audit_trail (tenant, actor, at);
CREATE INDEX audit_trail_at ON audit_trail (tenant, at);

CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();
REVOKE ALL ON audit_trail FROM chukan_app;
GRANT SELECT, INSERT ON audit_trail TO chukan_app;

SELECT chukan_isolate(t) FROM unnest(ARRAY[
    'staff_accounts', 'staff_sessions', 'audit_trail']::regclass[]) AS t;
