-- Offices (所属), the operation log (操作内容の記録) and bounded refusals (issue 14).
--
-- * offices: every staff account belongs to one.  An office may limit the item classes
--   (資格, 受給・認定, 給付, 賦課・収滞納) its staff see; NULL = every class.  The central
--   office (介護保険管理課) administers every account and the offices; another office's
--   administrators only their own accounts.  Offices are never deleted (accounts and the
--   operation log name them); the gateway seeds the defaults for its tenant at start
--   (ON CONFLICT DO NOTHING: an administrator's edits stay).  Existing accounts move to
--   介護保険管理課, seeded here for every tenant (from `tenants`: before row-level
--   security is on, and whatever the owner's own tenant).
-- * operation_log: one row per internal-API and staff/console operation: caller, office or
--   system, operation, target (宛名番号 or query id, never a 個人番号), outcome, request
--   id.  Append-only like the records (UPDATE, DELETE and TRUNCATE refused).
-- * access_refusals: refusals are counted per minute in one row per (caller, peer,
--   operation, status, code) instead of one row each, so a flood writes one row a minute;
--   rows from before this migration stay as they were (window_start NULL).

CREATE TABLE offices (
    tenant       text NOT NULL DEFAULT chukan_tenant(),
    code         text NOT NULL CHECK (code ~ '^[a-z][a-z0-9-]{1,31}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    central      boolean NOT NULL DEFAULT false,
    item_classes text[] CHECK (item_classes <@ ARRAY['qualification', 'certification',
                                                      'benefit', 'levy']),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text,
    PRIMARY KEY (tenant, code)
);

INSERT INTO offices (tenant, code, name, central)
    SELECT tenant, 'kaigo-hoken-kanri', '保健福祉局高齢障害部介護保険管理課', true FROM tenants;

ALTER TABLE staff_accounts ADD COLUMN office text NOT NULL DEFAULT 'kaigo-hoken-kanri';
ALTER TABLE staff_accounts ALTER COLUMN office DROP DEFAULT;
-- An account's own narrowing of its office's item classes (NULL = the office's).
ALTER TABLE staff_accounts ADD COLUMN item_classes text[]
    CHECK (item_classes <@ ARRAY['qualification', 'certification', 'benefit', 'levy']);
ALTER TABLE staff_accounts ADD FOREIGN KEY (tenant, office) REFERENCES offices (tenant, code);
CREATE INDEX staff_accounts_office ON staff_accounts (tenant, office);

REVOKE ALL ON offices FROM chukan_app;
GRANT SELECT, INSERT, UPDATE ON offices TO chukan_app;

CREATE TABLE operation_log (
    id          bigserial,
    tenant      text NOT NULL DEFAULT chukan_tenant(),
    at          timestamptz NOT NULL DEFAULT now(),
    caller_kind text NOT NULL CHECK (caller_kind IN ('system', 'staff', 'anonymous')),
    caller      text,
    office      text,
    operation   text NOT NULL CHECK (operation ~ '^[a-z][a-z0-9_.]{1,63}$'),
    target      text CHECK (length(target) <= 128),
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    status      integer NOT NULL,
    code        text,
    request_id  text,
    method      text NOT NULL,
    route       text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX operation_log_at ON operation_log (tenant, at);
CREATE INDEX operation_log_caller ON operation_log (tenant, caller, at);
CREATE INDEX operation_log_target ON operation_log (tenant, target, at) WHERE target IS NOT NULL;

CREATE TRIGGER operation_log_append_only BEFORE UPDATE OR DELETE ON operation_log
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER operation_log_no_truncate BEFORE TRUNCATE ON operation_log
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();
REVOKE ALL ON operation_log FROM chukan_app;
GRANT SELECT, INSERT ON operation_log TO chukan_app;

ALTER TABLE access_refusals ADD COLUMN window_start timestamptz;
ALTER TABLE access_refusals ADD COLUMN count bigint NOT NULL DEFAULT 1 CHECK (count > 0);
ALTER TABLE access_refusals ADD COLUMN last_at timestamptz;
ALTER TABLE access_refusals ADD COLUMN caller_key text GENERATED ALWAYS AS (coalesce(caller, '')) STORED;
ALTER TABLE access_refusals ADD COLUMN remote_key text GENERATED ALWAYS AS (coalesce(remote, '')) STORED;
CREATE UNIQUE INDEX access_refusals_window ON access_refusals
    (tenant, window_start, caller_key, remote_key, operation, status, code)
    WHERE window_start IS NOT NULL;
CREATE INDEX access_refusals_peer ON access_refusals (tenant, remote_key, window_start)
    WHERE window_start IS NOT NULL;
CREATE INDEX access_refusals_at ON access_refusals (tenant, refused_at);

SELECT chukan_isolate(t) FROM unnest(ARRAY['offices', 'operation_log']::regclass[]) AS t;
