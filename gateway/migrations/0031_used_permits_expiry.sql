-- The replay store is purged of permits past their expiry (plus the clock skew allowance).
CREATE INDEX used_permits_expiry ON used_permits (tenant, expires_at);
