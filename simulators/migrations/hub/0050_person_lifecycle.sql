-- What agencies tell the hub of their people's lifecycle (issue 15): a 符号 ended by
-- unregistration is no longer routable (refused with person_unregistered); a 符号 merged
-- into another of the same agency is converted to its successor.  Notices are kept
-- append-only, one per (agency, notice id): a repeated notice gets the same receipt.
--
-- J-LIS's 住民票コード step: a person can be found by the HMAC of their 住民票コード too
-- (the 処理通番 it issues is kept, like a 取得番号, as a digest in acquisition_numbers).

ALTER TABLE person_codes
    ADD COLUMN state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'unregistered', 'merged')),
    ADD COLUMN successor_code text,
    ADD COLUMN state_changed_at timestamptz,
    ADD CONSTRAINT person_codes_successor CHECK ((state = 'merged') = (successor_code IS NOT NULL));
CREATE INDEX person_codes_successor ON person_codes (agency_code, successor_code)
    WHERE successor_code IS NOT NULL;

CREATE TABLE person_code_notices (
    agency_code    text NOT NULL REFERENCES agencies (code),
    notice_id      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('unregistered', 'merged')),
    person_code    text NOT NULL,
    successor_code text,
    message_id     text NOT NULL,
    request_id     text,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency_code, notice_id)
);
CREATE TRIGGER person_code_notices_append_only BEFORE UPDATE OR DELETE ON person_code_notices
    FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER person_code_notices_no_truncate BEFORE TRUNCATE ON person_code_notices
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();

ALTER TABLE persons ADD COLUMN resident_digest bytea UNIQUE;
ALTER TABLE persons ALTER COLUMN number_digest DROP NOT NULL;
ALTER TABLE persons ADD CONSTRAINT persons_known_by
    CHECK (number_digest IS NOT NULL OR resident_digest IS NOT NULL);
