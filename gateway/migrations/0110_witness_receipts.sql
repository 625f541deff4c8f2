-- Witnessed checkpoints (chukan.gateway.records.witnessing): the hub's receipt for each
-- signed checkpoint of the record chain, and the alarm state of the records.
--
-- record_witness_receipts: what the witness countersigned (the checkpoint, the digest of
-- its segment's records, the witness's time, key and signature), one per checkpoint;
-- append-only and tenant-isolated like record_checkpoints.  The receipt is the gateway's
-- copy: what proves anything is the witness's own copy (records verify --witness hub).
--
-- record_witness_status: one row per tenant, kept by every worker of the agency, read by
-- /ready, /metrics and the refusal of new exchanges: the last witness success and
-- failure, a refusal by the witness (evidence of a rewrite), a broken chain found by the
-- checkpointer.  Alarm state, not evidence: it is updated in place.

CREATE TABLE record_witness_receipts (
    tenant            text NOT NULL DEFAULT chukan_tenant(),
    seq               bigint NOT NULL,
    after_seq         bigint NOT NULL,
    hash              bytea NOT NULL,
    signed_at         timestamptz NOT NULL,
    key_id            text NOT NULL,
    signature         bytea NOT NULL,
    segment_digest    bytea NOT NULL,
    witnessed_at      timestamptz NOT NULL,
    witness_key_id    text NOT NULL,
    witness_signature bytea NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, seq)
);

CREATE TRIGGER record_witness_receipts_append_only BEFORE UPDATE OR DELETE
    ON record_witness_receipts FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER record_witness_receipts_no_truncate BEFORE TRUNCATE ON record_witness_receipts
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();

CREATE TABLE record_witness_status (
    tenant              text PRIMARY KEY DEFAULT chukan_tenant(),
    last_success_at     timestamptz,
    last_failure_at     timestamptz,
    last_failure_code   text,
    failures            bigint NOT NULL DEFAULT 0,
    -- The witness refused a checkpoint (409): the chain was rewritten or checkpoints lost.
    refused_at          timestamptz,
    refused_code        text,
    refused_seq         bigint,
    -- The checkpointer found a segment that does not verify.
    chain_broken_at     timestamptz,
    chain_broken_seq    bigint,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON record_witness_receipts FROM chukan_app;
GRANT SELECT, INSERT ON record_witness_receipts TO chukan_app;
REVOKE ALL ON record_witness_status FROM chukan_app;
GRANT SELECT, INSERT, UPDATE ON record_witness_status TO chukan_app;

SELECT chukan_isolate(t) FROM unnest(ARRAY[
    'record_witness_receipts', 'record_witness_status']::regclass[]) AS t;
