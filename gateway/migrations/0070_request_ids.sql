-- Request ids (X-Request-Id) in the records' metadata: the id the core system (or the
-- gateway, when it sent none) gave the request a record comes from.  The same id
-- travels with the query to the hub and on to the provider, so the requester's, the
-- hub's and the provider's records of one query can be found by it.
--
-- Metadata, not content: the id is NOT part of the hash chain's canonical form
-- (chukan_record_canonical in 0003 and chain.canonical_record name their columns, and
-- this one is not among them), so it neither changes a record's hash nor can break
-- the chain; it is still append-only like every column (the triggers of 0003 refuse
-- UPDATE, DELETE and TRUNCATE).  Tenant roles may insert it, as they insert content.
--
-- A record written inside a transaction that set `chukan.request_id` (set_config(...,
-- true): transaction-local) takes it by default: a provision writes its record in one
-- statement with its decision (replica's PROVISION_SQL) and needs no extra parameter.
ALTER TABLE provision_records ADD COLUMN request_id text;
ALTER TABLE provision_records ALTER COLUMN request_id
    SET DEFAULT nullif(current_setting('chukan.request_id', true), '');
GRANT INSERT (request_id) ON provision_records TO chukan_app;

-- A query keeps the id of its submission: its resends (the durable sweep) and its
-- requester record carry that id, whichever request or process concludes it.
ALTER TABLE queries ADD COLUMN request_id text;
