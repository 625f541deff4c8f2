-- The hub (情報提供ネットワークシステム) and its J-LIS role.
-- Nothing here can decrypt a payload: agencies' private keys never reach the hub,
-- and 個人番号 are held only as keyed digests (HMAC) to find the same person again.

CREATE TABLE agencies (
    code             text PRIMARY KEY,
    name             text NOT NULL,
    endpoint         text NOT NULL,
    signing_key_id   text NOT NULL,
    signing_key      bytea NOT NULL,
    encryption_key_id text NOT NULL,
    encryption_key   bytea NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Previous keys stay known for signature checks during a rotation overlap.
CREATE TABLE agency_keys (
    key_id      text PRIMARY KEY,
    agency_code text NOT NULL REFERENCES agencies (code),
    purpose     text NOT NULL CHECK (purpose IN ('sig', 'enc')),
    public_key  bytea NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- J-LIS: a person is known by an HMAC of the 個人番号 under a hub secret.
CREATE TABLE persons (
    person_id     uuid PRIMARY KEY,
    number_digest bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- 取得番号: single use, short lived, stored only as a digest.
CREATE TABLE acquisition_numbers (
    number_digest bytea PRIMARY KEY,
    person_id     uuid NOT NULL REFERENCES persons (person_id),
    agency_code   text NOT NULL REFERENCES agencies (code),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);

-- 符号: a different random code for each (agency, person).
CREATE TABLE person_codes (
    agency_code text NOT NULL REFERENCES agencies (code),
    person_id   uuid NOT NULL REFERENCES persons (person_id),
    person_code text NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency_code, person_id)
);

-- Network message ids seen, against replays of signed messages.
CREATE TABLE seen_messages (
    message_id  text PRIMARY KEY,
    sender      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- The hub's record of every query it handled (情報提供等記録, hub side).
CREATE TABLE hub_records (
    query_id              text PRIMARY KEY,
    permit_id             text UNIQUE,
    requester             text NOT NULL,
    provider              text NOT NULL,
    business_code         text NOT NULL,
    procedure_code        text NOT NULL,
    item_code             text NOT NULL,
    legal_basis           integer,
    requester_person_code text NOT NULL,
    provider_person_code  text,
    requested_at          timestamptz NOT NULL,
    permit_expires_at     timestamptz,
    answered_at           timestamptz,
    outcome               text NOT NULL CHECK (outcome IN
                            ('permitted', 'provided', 'refused', 'held', 'undeliverable')),
    reason_code           text,
    non_disclosure        boolean NOT NULL DEFAULT false
);

-- Every message the hub routed, byte for byte (answers are ciphertext only).
CREATE TABLE routed_messages (
    id           bigserial PRIMARY KEY,
    message_id   text NOT NULL,
    message_type text NOT NULL,
    sender       text NOT NULL,
    receiver     text NOT NULL,
    query_id     text,
    permit_id    text,
    direction    text NOT NULL CHECK (direction IN ('in', 'out')),
    body         bytea NOT NULL,
    routed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routed_messages_query ON routed_messages (query_id);

-- Outbox: deliveries survive restarts and are retried with backoff.
CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('provision_request', 'answer')),
    target          text NOT NULL,
    query_id        text NOT NULL,
    body            bytea NOT NULL,
    signature       text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
