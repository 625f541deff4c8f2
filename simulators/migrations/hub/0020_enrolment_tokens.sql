-- Every agency enrols with its own token, issued by the hub operator; the hub
-- keeps only each token's SHA-256.  Rows are never deleted: a rotated or revoked
-- token stays (with revoked_at) so that presenting it is answered "revoked", not
-- "unknown".  At most one live token per agency.

CREATE TABLE enrolment_tokens (
    token_digest   bytea PRIMARY KEY CHECK (length(token_digest) = 32),
    agency_code    text NOT NULL CHECK (agency_code ~ '^([0-9]{6}|[0-9]{16})$'),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    issued_by      text,
    last_used_at   timestamptz,
    revoked_at     timestamptz,
    revoked_reason text CHECK (revoked_reason IN ('rotated', 'revoked')),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE UNIQUE INDEX enrolment_tokens_live ON enrolment_tokens (agency_code)
    WHERE revoked_at IS NULL;

-- The evidence of onboarding: every token issued, rotated or revoked, every
-- enrolment and every refused enrolment.  Append-only like hub_record_events.
CREATE TABLE enrolment_events (
    id           bigserial PRIMARY KEY,
    agency_code  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN
                   ('token_issued', 'token_rotated', 'token_revoked', 'enrolled', 'refused')),
    reason_code  text,
    caller       text,
    endpoint     text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'refused') = (reason_code IS NOT NULL))
);
CREATE INDEX enrolment_events_agency ON enrolment_events (agency_code, id);
CREATE TRIGGER enrolment_events_append_only BEFORE UPDATE OR DELETE ON enrolment_events
    FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER enrolment_events_no_truncate BEFORE TRUNCATE ON enrolment_events
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();
