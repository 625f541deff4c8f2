-- The other files a 保険者 sends (給付管理票 821, 償還払い実績 911, 特別徴収依頼 951),
-- kept as accepted by intake, and the link of a return file (特別徴収結果 952) to the
-- request file it answers.

CREATE TABLE accepted_flow_records (
    id               bigserial PRIMARY KEY,
    insurer_number   text NOT NULL,
    file_id          bigint NOT NULL REFERENCES received_files (id),
    first_record     integer NOT NULL,
    data_type        text NOT NULL CHECK (data_type IN ('821', '911', '951')),
    processing_month text NOT NULL,
    insured_number   text NOT NULL,
    -- 給付管理票: 対象年月; 償還払い実績: 整理番号; 特別徴収依頼: 賦課年度
    item_key         text NOT NULL,
    creation_kind    text,
    cancelled        boolean NOT NULL DEFAULT false,
    record           jsonb NOT NULL,
    accepted_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (file_id, first_record)
);
CREATE INDEX accepted_flow_records_key
    ON accepted_flow_records (insurer_number, data_type, insured_number, item_key);

ALTER TABLE return_files ADD COLUMN source_file_id bigint REFERENCES received_files (id);
CREATE UNIQUE INDEX return_files_source ON return_files (source_file_id)
    WHERE source_file_id IS NOT NULL;
