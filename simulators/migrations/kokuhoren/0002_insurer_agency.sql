-- The agency (団体) a 保険者 transmits from: with mutual TLS, a mailbox call must
-- present that agency's client certificate as well as the 保険者's token.
ALTER TABLE insurers ADD COLUMN agency_code text
    CHECK (agency_code IS NULL OR agency_code ~ '^[0-9]{6}([0-9]{10})?$');
