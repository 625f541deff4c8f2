-- Exactly-once exchange (DESIGN §9).
--
-- Requester: open queries are swept durably (resend while queued, ask the hub for the
-- conclusion while sent); `next_attempt_at` is when the sweep may touch one next.
-- A core system may retry a submission with the same Idempotency-Key: the key and a
-- digest of the request are kept with the query, so the retry gets the first answer.
ALTER TABLE queries
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN idempotency_key text,
    ADD COLUMN request_digest  bytea;
CREATE INDEX queries_open ON queries (tenant, next_attempt_at)
    WHERE status IN ('queued', 'sent');
CREATE UNIQUE INDEX queries_idempotency ON queries (tenant, submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- An answer that contradicts a query's stored conclusion is never applied and never
-- dropped silently: it is kept here as evidence (and counted, and logged).
CREATE TABLE conclusion_conflicts (
    id            bigserial PRIMARY KEY,
    tenant        text NOT NULL DEFAULT chukan_tenant(),
    query_id      text NOT NULL,
    stored_status text,
    received      text NOT NULL,
    sender        text NOT NULL,
    kind          text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
SELECT chukan_isolate('conclusion_conflicts');

-- Decided reviews whose answer is not yet sent are taken up by the same sweep.
ALTER TABLE review_queue ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
