-- A provider's answer to each provision request, kept until the permit can no longer
-- be replayed: when the hub retries a delivery whose answer was lost on the way back
-- (connection cut after the provider committed), the same request gets the same
-- answer again instead of a refusal, and nothing is provided or recorded twice.
CREATE TABLE provision_answers (
    tenant      text NOT NULL DEFAULT chukan_tenant(),
    message_id  text NOT NULL,
    permit_id   text NOT NULL,
    status      integer NOT NULL,
    body        bytea NOT NULL,
    signature   text,
    expires_at  timestamptz NOT NULL,
    answered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, message_id)
);

SELECT chukan_isolate('provision_answers');
