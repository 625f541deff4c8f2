-- Agencies publish every key of their ring that is still valid (active or in its rotation
-- overlap) with its validity; keys past valid_until are no longer accepted or listed.
ALTER TABLE agency_keys
    ADD COLUMN valid_from  timestamptz,
    ADD COLUMN valid_until timestamptz;
CREATE INDEX agency_keys_agency ON agency_keys (agency_code, purpose);
