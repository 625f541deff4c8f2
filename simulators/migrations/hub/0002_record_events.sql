-- The hub's 情報提供等記録 become append-only: every change of a query's state is
-- a new event row; `hub_records` is now a view of the current state (the first
-- event's parties, codes and 符号, with the latest event's outcome), so every
-- reader keeps working.  UPDATE, DELETE and TRUNCATE of the events are refused.

CREATE TABLE hub_record_events (
    id                    bigserial PRIMARY KEY,
    query_id              text NOT NULL,
    -- 'opened': the query arrived (permitted or refused); 'concluded': answered or
    -- refused after the permit; 'held': the provider holds it for manual review.
    kind                  text NOT NULL CHECK (kind IN ('opened', 'held', 'concluded')),
    permit_id             text,
    requester             text,
    provider              text,
    business_code         text,
    procedure_code        text,
    item_code             text,
    legal_basis           integer,
    requester_person_code text,
    provider_person_code  text,
    requested_at          timestamptz,
    permit_expires_at     timestamptz,
    answered_at           timestamptz,
    outcome               text NOT NULL CHECK (outcome IN
                            ('permitted', 'provided', 'refused', 'held', 'undeliverable')),
    reason_code           text,
    non_disclosure        boolean NOT NULL DEFAULT false,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'opened' OR (requester IS NOT NULL AND provider IS NOT NULL
           AND business_code IS NOT NULL AND procedure_code IS NOT NULL
           AND item_code IS NOT NULL AND requester_person_code IS NOT NULL
           AND requested_at IS NOT NULL))
);
CREATE UNIQUE INDEX hub_record_events_opened ON hub_record_events (query_id)
    WHERE kind = 'opened';
CREATE UNIQUE INDEX hub_record_events_permit ON hub_record_events (permit_id)
    WHERE kind = 'opened';
CREATE INDEX hub_record_events_query ON hub_record_events (query_id, id);

CREATE FUNCTION hub_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER hub_record_events_append_only BEFORE UPDATE OR DELETE ON hub_record_events
    FOR EACH ROW EXECUTE FUNCTION hub_append_only();
CREATE TRIGGER hub_record_events_no_truncate BEFORE TRUNCATE ON hub_record_events
    FOR EACH STATEMENT EXECUTE FUNCTION hub_append_only();

INSERT INTO hub_record_events (query_id, kind, permit_id, requester, provider, business_code,
        procedure_code, item_code, legal_basis, requester_person_code, provider_person_code,
        requested_at, permit_expires_at, answered_at, outcome, reason_code, non_disclosure)
    SELECT query_id, 'opened', permit_id, requester, provider, business_code, procedure_code,
           item_code, legal_basis, requester_person_code, provider_person_code, requested_at,
           permit_expires_at, answered_at, outcome, reason_code, non_disclosure
    FROM hub_records ORDER BY requested_at;
DROP TABLE hub_records;

CREATE VIEW hub_records AS
    SELECT o.query_id, o.permit_id, o.requester, o.provider, o.business_code,
           o.procedure_code, o.item_code, o.legal_basis, o.requester_person_code,
           o.provider_person_code, o.requested_at, o.permit_expires_at,
           COALESCE(l.answered_at, o.answered_at) AS answered_at,
           l.outcome, l.reason_code, o.non_disclosure
    FROM hub_record_events o
    CROSS JOIN LATERAL (
        SELECT e.answered_at, e.outcome, e.reason_code FROM hub_record_events e
        WHERE e.query_id = o.query_id ORDER BY e.id DESC LIMIT 1) l
    WHERE o.kind = 'opened';
