-- The 国保連 simulator: the 伝送 mailbox, the files received with their intake
-- results (取込結果), the register of recipients (受給者台帳) per 保険者, and the
-- return files (給付実績) it produces.  Its own database (chukan_kokuhoren).

-- 保険者 allowed to use the mailbox: a bearer token (kept as SHA-256 only) and keys.
CREATE TABLE insurers (
    insurer_number    text PRIMARY KEY CHECK (insurer_number ~ '^[0-9]{6}$'),
    name              text NOT NULL,
    token_sha256      text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    encryption_key_id text NOT NULL,
    encryption_key    bytea NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Every key an insurer has used; old ones stay valid for signature checks (rotation).
CREATE TABLE insurer_keys (
    key_id         text PRIMARY KEY,
    insurer_number text NOT NULL REFERENCES insurers (insurer_number),
    purpose        text NOT NULL CHECK (purpose IN ('sig', 'enc')),
    public_key     bytea NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now()
);

-- Files put in the mailbox, decrypted, with what intake made of them.
CREATE TABLE received_files (
    id                     bigserial PRIMARY KEY,
    insurer_number         text NOT NULL REFERENCES insurers (insurer_number),
    file_management_number text NOT NULL,
    file_name              text NOT NULL,
    data_type              text,
    processing_month       text,
    digest                 text NOT NULL,
    content                bytea NOT NULL,
    status                 text NOT NULL
                             CHECK (status IN ('accepted', 'partially_accepted', 'rejected')),
    intake_result          jsonb NOT NULL,
    received_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (insurer_number, file_management_number)
);

-- Accepted data records.  A 訂正 (5321) rewrites or deletes the 異動 (5311) it targets.
CREATE TABLE accepted_records (
    id               bigserial PRIMARY KEY,
    insurer_number   text NOT NULL,
    file_id          bigint NOT NULL REFERENCES received_files (id),
    record_number    integer NOT NULL,
    data_type        text NOT NULL CHECK (data_type IN ('531', '532')),
    processing_month text NOT NULL,
    insured_number   text NOT NULL,
    changed_on       date NOT NULL,
    change_kind      text NOT NULL,
    record           jsonb NOT NULL,
    deleted          boolean NOT NULL DEFAULT false,
    corrected_by     bigint REFERENCES accepted_records (id),
    accepted_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (file_id, record_number)
);
CREATE INDEX accepted_records_person ON accepted_records (insurer_number, insured_number, changed_on);
CREATE INDEX accepted_records_month ON accepted_records (insurer_number, data_type, processing_month);

-- 受給者台帳: the latest accepted, not deleted 異動 of each recipient.
CREATE TABLE recipients (
    insurer_number      text NOT NULL,
    insured_number      text NOT NULL,
    active              boolean NOT NULL,
    last_changed_on     date NOT NULL,
    care_level          text,
    burden_ratio        text NOT NULL,
    benefit_limit       integer,
    certification_start date,
    certification_end   date,
    record              jsonb NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (insurer_number, insured_number)
);

-- Files 国保連 puts in an insurer's mailbox (給付実績), kept as plaintext and sealed on fetch.
CREATE TABLE return_files (
    id                     bigserial PRIMARY KEY,
    insurer_number         text NOT NULL REFERENCES insurers (insurer_number),
    data_type              text NOT NULL,
    processing_month       text NOT NULL,
    file_name              text NOT NULL,
    file_management_number text NOT NULL,
    record_count           integer NOT NULL,
    content                bytea NOT NULL,
    digest                 text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    fetched_at             timestamptz,
    UNIQUE (insurer_number, file_management_number),
    UNIQUE (insurer_number, data_type, processing_month)
);
