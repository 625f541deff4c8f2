-- System management (システム管理): one row per batch job — imports, transmissions,
-- deletions — with its status, counts, timings and error text.

CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    kind            text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.]{1,63}$'),
    status          text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'done', 'failed')),
    subject         text,
    counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    error           text,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    next_attempt_at timestamptz
);
CREATE INDEX jobs_by_kind ON jobs (tenant, kind, created_at DESC);
CREATE INDEX jobs_due ON jobs (tenant, next_attempt_at) WHERE status IN ('queued', 'running');

SELECT chukan_isolate('jobs');
