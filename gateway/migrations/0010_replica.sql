-- 副本 (replica) store with history and validity, registration messages, the
-- manual-review flag and the review queue (issue 3).
--
-- replica_items becomes an append-only history per (宛名番号, item, DataSetRecordKey):
--   * version counts 1, 2, … per record key;
--   * valid_from / valid_to are the PublicationDate / PublishedEndDate of the version
--     (dates, both inclusive; valid_to NULL = open ended);
--   * a deletion entry is a version with deleted = true and no content: it ends the
--     record's validity from its valid_from on and keeps the history;
--   * record_id is the message's RecordIdentificationNumber (unique per tenant, NULL
--     for items stored one by one through PUT), message_id its MSGID;
--   * stored_at (the old valid_from) is when the version was stored.
-- The version in force on a date d for one record key is the one with the greatest
-- (valid_from, version) among valid_from <= d; it is provided when it is not a
-- deletion and valid_to is NULL or >= d (chukan.gateway.replica).

-- The owner runs migrations; while rows are moved it must see every tenant's rows
-- even when it is not a superuser (FORCE would subject it to the tenant policy).
ALTER TABLE replica_items NO FORCE ROW LEVEL SECURITY;

ALTER TABLE replica_items RENAME COLUMN valid_from TO stored_at;
DROP INDEX IF EXISTS replica_items_current;
ALTER TABLE replica_items
    ADD COLUMN record_key text NOT NULL DEFAULT '1'
        CHECK (record_key ~ '^[0-9A-Za-z_-]{1,64}$'),
    ADD COLUMN valid_from date,
    ADD COLUMN deleted boolean NOT NULL DEFAULT false,
    ADD COLUMN record_id text,
    ADD COLUMN message_id text,
    ALTER COLUMN content DROP NOT NULL,
    ALTER COLUMN digest DROP NOT NULL;
-- Versions stored before: valid from the day (in Japan) they were stored.
UPDATE replica_items SET valid_from = (stored_at AT TIME ZONE 'UTC' + interval '9 hours')::date;

-- The manual-review flag was a column of each version; it is now one flag per person
-- and item (replica_review_flags), taken from each item's latest version.
CREATE TABLE replica_review_flags (
    tenant        text NOT NULL DEFAULT chukan_tenant(),
    atena_id      text NOT NULL,
    item_code     text NOT NULL,
    manual_review boolean NOT NULL,
    set_by        text NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, atena_id, item_code),
    FOREIGN KEY (tenant, atena_id) REFERENCES persons (tenant, atena_id)
);
INSERT INTO replica_review_flags (tenant, atena_id, item_code, manual_review, set_by, set_at)
    SELECT DISTINCT ON (tenant, atena_id, item_code)
           tenant, atena_id, item_code, manual_review, stored_by, stored_at
    FROM replica_items
    ORDER BY tenant, atena_id, item_code, version DESC;
DELETE FROM replica_review_flags WHERE NOT manual_review;

ALTER TABLE replica_items
    DROP COLUMN valid_to,
    DROP COLUMN manual_review;
ALTER TABLE replica_items
    ADD COLUMN valid_to date,
    ALTER COLUMN valid_from SET NOT NULL,
    ADD CONSTRAINT replica_items_content
        CHECK ((content IS NULL) = deleted AND (digest IS NULL) = deleted),
    ADD CONSTRAINT replica_items_period CHECK (valid_to IS NULL OR valid_to >= valid_from),
    DROP CONSTRAINT replica_items_tenant_atena_id_item_code_version_key,
    ADD CONSTRAINT replica_items_version UNIQUE (tenant, atena_id, item_code, record_key, version),
    -- A RecordIdentificationNumber is accepted once per tenant, ever.
    ADD CONSTRAINT replica_items_record_id UNIQUE (tenant, record_id);
ALTER TABLE replica_items FORCE ROW LEVEL SECURITY;
CREATE INDEX replica_items_on_date
    ON replica_items (tenant, atena_id, item_code, record_key, valid_from, version);

-- Registration messages (IF_DBM_20113_R01) by MSGID: the first result is kept and
-- answered again to a re-sent message, which changes nothing.
CREATE TABLE replica_messages (
    id            bigserial,
    tenant        text NOT NULL DEFAULT chukan_tenant(),
    message_id    text NOT NULL,
    body_sha256   text NOT NULL,
    source_system text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('accepted', 'rejected')),
    http_status   integer NOT NULL,
    result        jsonb NOT NULL,
    entries       integer NOT NULL,
    received_by   text NOT NULL,
    job_id        bigint,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, message_id),
    UNIQUE (id)
);

-- Provisions of flagged items (自動応答不可) wait here for a staff decision.  The row
-- keeps what answering later needs: the permit (already consumed and recorded as
-- 'held'), the requester and its encryption key, and the replica versions that were
-- in force on the reference date when the request came.
CREATE TABLE review_queue (
    tenant            text NOT NULL DEFAULT chukan_tenant(),
    query_id          text NOT NULL,
    permit_id         text NOT NULL,
    permit_expires_at timestamptz NOT NULL,
    requester         text NOT NULL,
    requester_key_id  text NOT NULL,
    requester_key     bytea NOT NULL,
    business_code     text NOT NULL,
    procedure_code    text NOT NULL,
    item_code         text NOT NULL,
    legal_basis       integer,
    atena_id          text NOT NULL,
    reference_date    date NOT NULL,
    replica_ids       bigint[] NOT NULL,
    requested_at      timestamptz NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'approved', 'refused')),
    outcome           text CHECK (outcome IN ('provided', 'refused')),
    reason_code       text,
    decided_by        text,
    decided_at        timestamptz,
    -- Delivery of the deferred answer through the hub.
    sent_at           timestamptz,
    send_attempts     integer NOT NULL DEFAULT 0,
    send_error        text,
    PRIMARY KEY (tenant, query_id),
    FOREIGN KEY (tenant, atena_id) REFERENCES persons (tenant, atena_id),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE INDEX review_queue_pending ON review_queue (tenant, requested_at) WHERE status = 'pending';
CREATE INDEX review_queue_unsent ON review_queue (tenant, decided_at)
    WHERE status <> 'pending' AND sent_at IS NULL;

-- A held provision is recorded when the request comes ('held') and again when staff
-- decide ('provided' / 'refused'): records stay append-only.  One final record per
-- role and query remains the rule.  (Guarded: a later schema may have replaced the
-- table of 0001 by a partitioned one with its own rules.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conname = 'provision_records_tenant_role_query_id_key'
                 AND conrelid = 'provision_records'::regclass) THEN
        ALTER TABLE provision_records DROP CONSTRAINT provision_records_tenant_role_query_id_key;
        CREATE UNIQUE INDEX provision_records_final ON provision_records (tenant, role, query_id)
            WHERE outcome <> 'held';
    END IF;
END
$$;

SELECT chukan_isolate(t) FROM unnest(ARRAY[
    'replica_review_flags', 'replica_messages', 'review_queue']::regclass[]) AS t;
