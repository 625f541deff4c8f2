-- Every authorization list version the hub published, as signed and distributed.
CREATE TABLE authorization_lists (
    version         integer PRIMARY KEY CHECK (version > 0),
    issued_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL CHECK (expires_at > issued_at),
    row_count       integer NOT NULL,
    digest          text NOT NULL,
    signed_document bytea NOT NULL,
    published_by    text,
    published_at    timestamptz NOT NULL DEFAULT now()
);
