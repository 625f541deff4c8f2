-- 不開示 travels with the query (QueryRequest → ProvisionRequest), so the provider
-- records it too; a provision held for review keeps it for the decision's record.
ALTER TABLE review_queue ADD COLUMN non_disclosure boolean NOT NULL DEFAULT false;
