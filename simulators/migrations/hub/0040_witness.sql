-- Witnessed checkpoints (chukan.simulators.hub.witness): the hub countersigns each
-- agency's signed checkpoint of its record chain and keeps it here, with the digest of
-- every record the checkpoint covers since the previous one, so that a database
-- superuser at the agency cannot rewrite the agency's records unseen.
--
-- One linear chain of segments per tenant: (tenant, seq) and (tenant, after_seq) are
-- both unique, and the primary key's index answers "the last seq witnessed for this
-- tenant" (ORDER BY seq DESC LIMIT 1).  Append-only like the hub's record events.
CREATE TABLE witnessed_checkpoints (
    tenant            text NOT NULL,
    seq               bigint NOT NULL,
    after_seq         bigint NOT NULL CHECK (after_seq >= 0),
    hash              bytea NOT NULL CHECK (octet_length(hash) = 32),
    signed_at         timestamptz NOT NULL,
    key_id            text NOT NULL,
    signature         bytea NOT NULL,
    segment_digest    bytea NOT NULL CHECK (octet_length(segment_digest) = 32),
    -- The segment's record digests, 32 bytes each, in seq order.
    records           bytea NOT NULL,
    witnessed_at      timestamptz NOT NULL,
    witness_key_id    text NOT NULL,
    witness_signature bytea NOT NULL,
    request_id        text,
    PRIMARY KEY (tenant, seq),
    UNIQUE (tenant, after_seq),
    CHECK (seq > after_seq),
    CHECK (octet_length(records) = 32 * (seq - after_seq))
);

CREATE TRIGGER witnessed_checkpoints_append_only BEFORE UPDATE OR DELETE
    ON witnessed_checkpoints FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER witnessed_checkpoints_no_truncate BEFORE TRUNCATE ON witnessed_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();
