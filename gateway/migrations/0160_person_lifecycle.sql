-- Person lifecycle through the 団体内統合宛名システム, and erasure (issue 15, items 1 and 4).
-- docs/persons.md says what each state means for the 符号, the 副本 and provisions.
--
-- persons: a person is registered (active), then may be reported 転出 (moved_out),
-- 死亡 (deceased), merged into another 宛名番号 (merged: merged_into names the survivor)
-- or unregistered.  A purge (chukan persons purge) erases an unregistered or merged
-- person's 副本 and the mapping itself: person_code becomes NULL and the row stays as
-- a tombstone (state 'purged'), because provision records, queries and held
-- provisions name the 宛名番号 and must keep doing so.

ALTER TABLE persons
    ADD COLUMN state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'moved_out', 'deceased', 'merged', 'unregistered',
                         'purged')),
    ADD COLUMN state_date date,
    ADD COLUMN state_changed_at timestamptz,
    ADD COLUMN merged_into text,
    ALTER COLUMN person_code DROP NOT NULL,
    ADD CONSTRAINT persons_code_until_purged CHECK ((person_code IS NULL) = (state = 'purged')),
    ADD CONSTRAINT persons_merged_into CHECK (state <> 'merged' OR merged_into IS NOT NULL),
    ADD CONSTRAINT persons_merged_into_person
        FOREIGN KEY (tenant, merged_into) REFERENCES persons (tenant, atena_id);

-- Every lifecycle event, append-only: who reported it, when, under which request.  No
-- 符号 and no 個人番号 here: only 宛名番号, so the history outlives the mapping's erasure.
CREATE TABLE person_events (
    id             bigserial PRIMARY KEY,
    tenant         text NOT NULL DEFAULT chukan_tenant(),
    atena_id       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('registered', 'reregistered', 'moved_out',
                                                 'deceased', 'merged', 'unregistered',
                                                 'purged')),
    event_date     date,
    other_atena_id text,
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
    actor          text NOT NULL,
    request_id     text,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_events_person ON person_events (tenant, atena_id, id);
CREATE TRIGGER person_events_append_only BEFORE UPDATE OR DELETE ON person_events
    FOR EACH ROW EXECUTE FUNCTION chukan_append_only();
CREATE TRIGGER person_events_no_truncate BEFORE TRUNCATE ON person_events
    FOR EACH STATEMENT EXECUTE FUNCTION chukan_append_only();

-- What the hub must be told (unregistration, merge), until it acknowledged with its
-- signed receipt.  The row holds 符号 (the mapping): a purge erases it with the mapping.
CREATE TABLE person_notices (
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    notice_id       text NOT NULL,
    event_id        bigint NOT NULL REFERENCES person_events (id),
    atena_id        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('unregistered', 'merged')),
    person_code     text NOT NULL,
    successor_code  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    receipt         bytea,
    PRIMARY KEY (tenant, notice_id),
    CHECK ((kind = 'merged') = (successor_code IS NOT NULL))
);
CREATE INDEX person_notices_open ON person_notices (tenant, created_at)
    WHERE acknowledged_at IS NULL;

SELECT chukan_isolate('person_events');
SELECT chukan_isolate('person_notices');
REVOKE ALL ON person_events FROM chukan_app;
GRANT SELECT, INSERT ON person_events TO chukan_app;
