-- Every authorization list (照会許可照合リスト) version this gateway accepted from the hub,
-- with the raw signed document as received, so that what was in force at any time can be
-- shown and re-verified.  Append-only for the application: versions never change or go.

CREATE TABLE authorization_lists (
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    version         integer NOT NULL CHECK (version > 0),
    issued_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL CHECK (expires_at > issued_at),
    row_count       integer NOT NULL CHECK (row_count >= 0),
    digest          text NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    received_at     timestamptz NOT NULL DEFAULT now(),
    signed_document bytea NOT NULL,
    PRIMARY KEY (tenant, version)
);

SELECT chukan_isolate('authorization_lists');
REVOKE UPDATE, DELETE, TRUNCATE ON authorization_lists FROM chukan_app;
