-- Exactly-once exchange at the hub (DESIGN §9).
--
-- Deliveries: the lease (who is delivering now: leased_until + lease_token) is apart
-- from the backoff (next_attempt_at); only the holder of the current lease completes
-- a delivery.  give_up_at bounds the retries: the permit's life plus a grace period
-- for provision requests, the answer retention for answers.
ALTER TABLE deliveries
    ADD COLUMN leased_until timestamptz,
    ADD COLUMN lease_token  uuid,
    ADD COLUMN give_up_at   timestamptz;
CREATE UNIQUE INDEX deliveries_one_per_query ON deliveries (query_id, kind);

-- Exactly one conclusion per query (provided, refused, expired): the first wins and is
-- the only one forwarded; a later contradicting answer is kept apart as evidence.
ALTER TABLE hub_record_events DROP CONSTRAINT hub_record_events_outcome_check;
ALTER TABLE hub_record_events ADD CONSTRAINT hub_record_events_outcome_check CHECK (outcome IN
    ('permitted', 'provided', 'refused', 'held', 'undeliverable', 'expired'));
CREATE UNIQUE INDEX hub_record_events_concluded ON hub_record_events (query_id)
    WHERE kind = 'concluded';
CREATE UNIQUE INDEX hub_record_events_held ON hub_record_events (query_id)
    WHERE kind = 'held';

CREATE TABLE hub_conclusion_conflicts (
    id          bigserial PRIMARY KEY,
    query_id    text NOT NULL,
    sender      text NOT NULL,
    outcome     text NOT NULL,
    reason_code text,
    body        bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- The current state: the conclusion if there is one, else the latest event.
CREATE OR REPLACE VIEW hub_records AS
    SELECT o.query_id, o.permit_id, o.requester, o.provider, o.business_code,
           o.procedure_code, o.item_code, o.legal_basis, o.requester_person_code,
           o.provider_person_code, o.requested_at, o.permit_expires_at,
           COALESCE(l.answered_at, o.answered_at) AS answered_at,
           l.outcome, l.reason_code, o.non_disclosure
    FROM hub_record_events o
    CROSS JOIN LATERAL (
        SELECT e.answered_at, e.outcome, e.reason_code FROM hub_record_events e
        WHERE e.query_id = o.query_id
        ORDER BY (e.kind = 'concluded') DESC, e.id DESC LIMIT 1) l
    WHERE o.kind = 'opened';
