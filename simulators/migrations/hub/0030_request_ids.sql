-- Request ids (X-Request-Id) at the hub: each record event keeps the id of the request
-- (or delivery) that caused it, and each delivery the id of the query it belongs to,
-- which the worker sends with every attempt (a retried delivery keeps it).  The
-- `hub_records` view shows the id the query arrived with (its opened event).
ALTER TABLE hub_record_events ADD COLUMN request_id text;
ALTER TABLE deliveries ADD COLUMN request_id text;

CREATE OR REPLACE VIEW hub_records AS
    SELECT o.query_id, o.permit_id, o.requester, o.provider, o.business_code,
           o.procedure_code, o.item_code, o.legal_basis, o.requester_person_code,
           o.provider_person_code, o.requested_at, o.permit_expires_at,
           COALESCE(l.answered_at, o.answered_at) AS answered_at,
           l.outcome, l.reason_code, o.non_disclosure, o.request_id
    FROM hub_record_events o
    CROSS JOIN LATERAL (
        SELECT e.answered_at, e.outcome, e.reason_code FROM hub_record_events e
        WHERE e.query_id = o.query_id
        ORDER BY (e.kind = 'concluded') DESC, e.id DESC LIMIT 1) l
    WHERE o.kind = 'opened';
