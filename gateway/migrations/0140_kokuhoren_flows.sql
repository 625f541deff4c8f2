-- The other 国保連 flows (issue 15 item 5): 給付管理票 (821), 償還払い実績 (911) and
-- 特別徴収依頼 (951) posted by the core system and sent in files like the 異動連絡票;
-- 特別徴収結果 (952) returned by 国保連; 給付実績 (861) applied to the 副本's 0300 item.
-- 被保険者番号, 基礎年金番号 and names are personal data: stored here, never logged.

ALTER TABLE kokuhoren_transmissions DROP CONSTRAINT IF EXISTS kokuhoren_transmissions_kind_check;
ALTER TABLE kokuhoren_transmissions DROP CONSTRAINT IF EXISTS kokuhoren_transmissions_data_type_check;
ALTER TABLE kokuhoren_transmissions
    ADD CONSTRAINT kokuhoren_transmissions_kind_check CHECK (kind IN
        ('change', 'correction', 'benefit_plan', 'reimbursement', 'special_collection')),
    ADD CONSTRAINT kokuhoren_transmissions_data_type_check
        CHECK (data_type IN ('531', '532', '821', '911', '951'));

-- One record of a flow as posted (a 給付管理票 of one person and month, one 償還払い
-- 実績, one 特別徴収依頼); it goes into the first file built for a month on or after
-- its month. first_record..last_record are its lines in that file.
CREATE TABLE kokuhoren_flow_records (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL DEFAULT chukan_tenant(),
    flow            text NOT NULL
                      CHECK (flow IN ('benefit_plan', 'reimbursement', 'special_collection')),
    record_id       text NOT NULL,
    record          jsonb NOT NULL,
    digest          text NOT NULL,
    month           text NOT NULL CHECK (month ~ '^[0-9]{6}$'),
    status          text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'included', 'refused')),
    error_code      text,
    transmission_id bigint,
    first_record    integer,
    last_record     integer,
    intake_status   text CHECK (intake_status IN ('accepted', 'rejected')),
    intake_code     text,
    submitted_by    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, flow, record_id),
    FOREIGN KEY (tenant, transmission_id) REFERENCES kokuhoren_transmissions (tenant, id)
);
CREATE INDEX kokuhoren_flow_records_pending ON kokuhoren_flow_records
    (tenant, flow, month) WHERE status = 'pending';
CREATE INDEX kokuhoren_flow_records_by_transmission ON kokuhoren_flow_records
    (tenant, transmission_id, first_record);

-- 特別徴収結果 (通知内容コード 22) read from 952 return files, each tied to its request.
CREATE TABLE kokuhoren_collection_results (
    id                      bigserial PRIMARY KEY,
    tenant                  text NOT NULL DEFAULT chukan_tenant(),
    return_file_id          bigint NOT NULL,
    record_number           integer NOT NULL,
    request_id              bigint REFERENCES kokuhoren_flow_records (id),
    insured_number          text NOT NULL,
    fiscal_year             integer NOT NULL,
    result_kind             text NOT NULL,
    result_on               date NOT NULL,
    amounts                 integer[] NOT NULL,
    UNIQUE (tenant, return_file_id, record_number),
    FOREIGN KEY (tenant, return_file_id) REFERENCES kokuhoren_return_files (tenant, id)
);

-- A 給付実績 file is applied to the 副本 (0300) once, in the transaction that marks it.
ALTER TABLE kokuhoren_return_files
    ADD COLUMN replica_applied_at timestamptz,
    ADD COLUMN replica_result jsonb;

SELECT chukan_isolate('kokuhoren_flow_records');
SELECT chukan_isolate('kokuhoren_collection_results');
