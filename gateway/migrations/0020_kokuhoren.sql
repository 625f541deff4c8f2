-- 国保連 伝送 (DESIGN §3 flow 6): recipient changes posted by the core system, the
-- 受給者異動連絡票 / 訂正連絡票 files built from them, their delivery to the 国保連
-- mailbox with its intake result (取込結果), and the return files (給付実績) ingested.
-- 被保険者番号 and names are personal data: stored here, never logged.

-- One change of one recipient (受給者), as posted; it goes into the first file built
-- for a month on or after its 異動年月日 (or 訂正年月日 for corrections).
CREATE TABLE kokuhoren_recipient_changes (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    change_id       text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('change', 'correction')),
    record          jsonb NOT NULL,
    digest          text NOT NULL,
    effective_on    date NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'included', 'refused')),
    error_code      text,
    transmission_id bigint,
    record_number   integer,
    intake_status   text CHECK (intake_status IN ('accepted', 'rejected')),
    intake_code     text,
    submitted_by    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, change_id)
);
CREATE INDEX kokuhoren_changes_pending ON kokuhoren_recipient_changes
    (tenant, kind, effective_on) WHERE status = 'pending';
CREATE INDEX kokuhoren_changes_by_transmission ON kokuhoren_recipient_changes
    (tenant, transmission_id, record_number);

-- One file handed to the 伝送 mailbox: its identity, the plaintext kept for re-sending,
-- and what 国保連 answered.
CREATE TABLE kokuhoren_transmissions (
    id                     bigserial PRIMARY KEY,
    tenant                 text NOT NULL DEFAULT chukan_tenant(),
    job_id                 bigint NOT NULL REFERENCES jobs (id),
    kind                   text NOT NULL CHECK (kind IN ('change', 'correction')),
    data_type              text NOT NULL CHECK (data_type IN ('531', '532')),
    processing_month       text NOT NULL CHECK (processing_month ~ '^[0-9]{6}$'),
    file_name              text NOT NULL,
    file_management_number text NOT NULL CHECK (file_management_number ~ '^[0-9]{10}$'),
    record_count           integer NOT NULL CHECK (record_count >= 1),
    content                bytea NOT NULL,
    digest                 text NOT NULL,
    status                 text NOT NULL DEFAULT 'queued'
                             CHECK (status IN ('queued', 'delivered', 'failed')),
    attempts               integer NOT NULL DEFAULT 0,
    last_error             text,
    accepted_count         integer,
    rejected_count         integer,
    intake_result          jsonb,
    created_by             text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    delivered_at           timestamptz,
    UNIQUE (tenant, id),
    UNIQUE (tenant, job_id),
    UNIQUE (tenant, file_management_number)
);

ALTER TABLE kokuhoren_recipient_changes
    ADD FOREIGN KEY (tenant, transmission_id) REFERENCES kokuhoren_transmissions (tenant, id);

-- Files 国保連 returned (給付実績), as fetched from the mailbox and decoded.
CREATE TABLE kokuhoren_return_files (
    id                     bigserial PRIMARY KEY,
    tenant                 text NOT NULL DEFAULT chukan_tenant(),
    job_id                 bigint NOT NULL REFERENCES jobs (id),
    data_type              text NOT NULL,
    processing_month       text NOT NULL CHECK (processing_month ~ '^[0-9]{6}$'),
    file_name              text NOT NULL,
    file_management_number text NOT NULL,
    record_count           integer NOT NULL,
    content                bytea NOT NULL,
    digest                 text NOT NULL,
    received_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, id),
    UNIQUE (tenant, file_management_number)
);
CREATE INDEX kokuhoren_return_files_month ON kokuhoren_return_files (tenant, processing_month);

CREATE TABLE kokuhoren_benefit_records (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    return_file_id  bigint NOT NULL,
    record_number   integer NOT NULL,
    service_month   text NOT NULL,
    insured_number  text NOT NULL,
    provider_number text NOT NULL,
    service_type    text NOT NULL,
    units           integer NOT NULL,
    benefit_amount  integer NOT NULL,
    copayment       integer NOT NULL,
    UNIQUE (tenant, return_file_id, record_number),
    FOREIGN KEY (tenant, return_file_id) REFERENCES kokuhoren_return_files (tenant, id)
);
CREATE INDEX kokuhoren_benefit_records_person ON kokuhoren_benefit_records
    (tenant, insured_number);

SELECT chukan_isolate('kokuhoren_recipient_changes');
SELECT chukan_isolate('kokuhoren_transmissions');
SELECT chukan_isolate('kokuhoren_return_files');
SELECT chukan_isolate('kokuhoren_benefit_records');
