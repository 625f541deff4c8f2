-- The alarm state of the hub's records (chukan.simulators.hub.record_status), shared by
-- every hub process: /ready, /metrics and the refusal of new queries read it.
--
-- One row per source: 'chain' (the checkpointer found the unsigned segment, or the chain
-- head, broken) and 'witness:<host>:<path>' (one per witness file: it no longer matches
-- the database's checkpoints, or it cannot be written).  failing_since is set while the
-- source fails and cleared by the first pass that finds it sound again; failures only
-- counts up.  checked_at: the last pass that wrote the row (a witness row of a process
-- gone for good stops counting once it is stale).
--
-- Alarm state, not evidence: updated in place.  A superuser who clears it gains a second
-- at most, until the next pass finds the fault again.

CREATE TABLE hub_record_alarms (
    source        text PRIMARY KEY CHECK (source = 'chain' OR source LIKE 'witness:%'),
    failing_since timestamptz,
    code          text,
    seq           bigint,
    detail        text,
    failures      bigint NOT NULL DEFAULT 0,
    witnessed_seq bigint,
    last_ok_at    timestamptz,
    checked_at    timestamptz NOT NULL DEFAULT now()
);
