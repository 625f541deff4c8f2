-- An agency's intermediate server (中間サーバー).  The 個人番号 is never stored:
-- people are keyed by 団体内統合宛名番号 (atena_id) and bound to this agency's 符号.

CREATE TABLE persons (
    atena_id      text PRIMARY KEY,
    person_code   text NOT NULL UNIQUE,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- 副本: versioned items per person and 特定個人情報名.
CREATE TABLE replica_items (
    id             bigserial PRIMARY KEY,
    atena_id       text NOT NULL REFERENCES persons (atena_id),
    item_code      text NOT NULL,
    version        integer NOT NULL,
    content        bytea NOT NULL,
    digest         text NOT NULL,
    manual_review  boolean NOT NULL DEFAULT false,
    valid_from     timestamptz NOT NULL DEFAULT now(),
    valid_to       timestamptz,
    stored_by      text NOT NULL,
    UNIQUE (atena_id, item_code, version)
);
CREATE INDEX replica_items_current ON replica_items (atena_id, item_code) WHERE valid_to IS NULL;

-- Outgoing queries (情報照会) and their results until collected or expired.
CREATE TABLE queries (
    query_id       text PRIMARY KEY,
    atena_id       text NOT NULL REFERENCES persons (atena_id),
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
    expires_at     timestamptz NOT NULL
);
CREATE INDEX queries_queued ON queries (created_at) WHERE status = 'queued';

-- Permits already used (情報提供許可証 are single use); kept until they expire.
CREATE TABLE used_permits (
    permit_id  text PRIMARY KEY,
    query_id   text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz NOT NULL DEFAULT now()
);

-- Network message ids seen, against replays of signed messages.
CREATE TABLE seen_messages (
    message_id  text PRIMARY KEY,
    sender      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- 情報提供等記録: one row per query made (role requester) or answered (role provider).
CREATE TABLE provision_records (
    id             bigserial PRIMARY KEY,
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
    UNIQUE (role, query_id)
);
CREATE INDEX provision_records_person ON provision_records (atena_id);

-- Refused calls to the internal API, with the caller's identity (never a secret).
CREATE TABLE access_refusals (
    id         bigserial PRIMARY KEY,
    caller     text,
    operation  text NOT NULL,
    status     integer NOT NULL,
    code       text NOT NULL,
    remote     text,
    refused_at timestamptz NOT NULL DEFAULT now()
);
