-- The hub's 情報提供等記録 chained, like the gateways' provision records (0003 there).
--
-- * Every event of hub_record_events gets seq, prev_hash and
--   hash = sha256(prev_hash || canonical content), set by a BEFORE INSERT trigger
--   that locks the one chain head row until the inserting transaction commits:
--   concurrent hub processes extend one chain, in commit order.  No extra round
--   trip: routing and the worker only INSERT, as before.
-- * The trigger, holding the head lock, skips (RETURN NULL) an event that repeats
--   the query's opened, held or concluded event: what ON CONFLICT DO NOTHING did,
--   decided before the chain moves on (a BEFORE trigger runs before ON CONFLICT
--   looks, so a skipped row must never have advanced the head).
-- * hub_record_checkpoints: (seq, hash) of the chain head signed by the hub's key
--   every N events or T seconds (chukan.simulators.hub.checkpoints), each also
--   appended with its events' digests to a witness file outside the database.
-- * Append-only: UPDATE, DELETE and TRUNCATE of events and checkpoints are refused
--   by trigger (0002's for the events), the owner included; the head row cannot be
--   deleted (without it nothing can be recorded: the hub stops exchanging).
--
-- The canonical form is defined twice, here and in chukan.simulators.hub.chain
-- (canonical_event); tests hold them to the same bytes.

CREATE FUNCTION hub_chain_genesis() RETURNS bytea
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT sha256(convert_to('chukan-hub-record-v1|genesis', 'UTF8')) $$;

-- name:length:value; (length in UTF-8 bytes) or name:-; for NULL: unambiguous.
CREATE FUNCTION hub_canon(name text, value text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT name || ':' || CASE WHEN value IS NULL THEN '-'
                 ELSE octet_length(convert_to(value, 'UTF8')) || ':' || value END || ';' $$;

CREATE FUNCTION hub_canon_ts(value timestamptz) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

ALTER TABLE hub_record_events
    ADD COLUMN seq       bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea;

-- Every field but id, request_id (metadata beside the record) and the hashes.
CREATE FUNCTION hub_event_canonical(e hub_record_events) RETURNS bytea
    LANGUAGE sql STABLE
    AS $$ SELECT convert_to('chukan-hub-record-v1;'
        || hub_canon('seq', e.seq::text)
        || hub_canon('query_id', e.query_id)
        || hub_canon('kind', e.kind)
        || hub_canon('permit_id', e.permit_id)
        || hub_canon('requester', e.requester)
        || hub_canon('provider', e.provider)
        || hub_canon('business_code', e.business_code)
        || hub_canon('procedure_code', e.procedure_code)
        || hub_canon('item_code', e.item_code)
        || hub_canon('legal_basis', e.legal_basis::text)
        || hub_canon('requester_person_code', e.requester_person_code)
        || hub_canon('provider_person_code', e.provider_person_code)
        || hub_canon('requested_at', hub_canon_ts(e.requested_at))
        || hub_canon('permit_expires_at', hub_canon_ts(e.permit_expires_at))
        || hub_canon('answered_at', hub_canon_ts(e.answered_at))
        || hub_canon('outcome', e.outcome)
        || hub_canon('reason_code', e.reason_code)
        || hub_canon('non_disclosure', CASE WHEN e.non_disclosure THEN 'true' ELSE 'false' END)
        || hub_canon('recorded_at', hub_canon_ts(e.recorded_at)), 'UTF8') $$;

-- One row: the last event of the chain.
CREATE TABLE hub_record_chain_head (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints: the hub vouches for the chain up to seq (after_seq: the previous one).
CREATE TABLE hub_record_checkpoints (
    seq        bigint PRIMARY KEY,
    after_seq  bigint NOT NULL,
    hash       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text NOT NULL,
    public_key bytea NOT NULL,
    signature  bytea NOT NULL,
    CHECK (after_seq < seq)
);

CREATE FUNCTION hub_chain_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head record;
BEGIN
    SELECT h.seq, h.hash INTO head FROM hub_record_chain_head h FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hub_record_chain_head is missing: the hub cannot record'
            USING ERRCODE = 'data_corrupted';
    END IF;
    -- Under the head lock, so no concurrent insert of the same event can pass this too.
    IF EXISTS (SELECT 1 FROM hub_record_events e
               WHERE e.query_id = NEW.query_id AND e.kind = NEW.kind) THEN
        RETURN NULL;
    END IF;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := sha256(head.hash || hub_event_canonical(NEW));
    UPDATE hub_record_chain_head SET seq = NEW.seq, hash = NEW.hash, updated_at = now();
    RETURN NEW;
END
$$;

-- The events so far, chained in the order they were written (0002's triggers forbid the
-- UPDATE: off for this transaction only).
ALTER TABLE hub_record_events DISABLE TRIGGER hub_record_events_append_only;
DO $$
DECLARE
    e hub_record_events;
    prev bytea := hub_chain_genesis();
    n bigint := 0;
BEGIN
    FOR e IN SELECT * FROM hub_record_events ORDER BY id LOOP
        n := n + 1;
        e.seq := n;
        e.prev_hash := prev;
        e.hash := sha256(prev || hub_event_canonical(e));
        UPDATE hub_record_events SET seq = e.seq, prev_hash = e.prev_hash, hash = e.hash
            WHERE id = e.id;
        prev := e.hash;
    END LOOP;
    INSERT INTO hub_record_chain_head (seq, hash) VALUES (n, prev);
END
$$;
ALTER TABLE hub_record_events ENABLE TRIGGER hub_record_events_append_only;
ALTER TABLE hub_record_events
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
-- Not unique: a row inserted behind the trigger's back is found (and named) by verify.
CREATE INDEX hub_record_events_chain ON hub_record_events (seq);
-- Reconciliation reads a period of queries by their requested time.
CREATE INDEX hub_record_events_requested ON hub_record_events (requested_at)
    WHERE kind = 'opened';

CREATE TRIGGER hub_record_events_chain BEFORE INSERT ON hub_record_events
    FOR EACH ROW EXECUTE FUNCTION hub_chain_event();
CREATE TRIGGER hub_record_checkpoints_append_only BEFORE UPDATE OR DELETE
    ON hub_record_checkpoints FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER hub_record_checkpoints_no_truncate BEFORE TRUNCATE ON hub_record_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER hub_record_chain_head_no_delete BEFORE DELETE ON hub_record_chain_head
    FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER hub_record_chain_head_no_truncate BEFORE TRUNCATE ON hub_record_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();
