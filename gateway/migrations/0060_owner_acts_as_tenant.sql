-- Administrative commands act as a tenant with SET ROLE, which an owner that is not a
-- superuser may use (it is granted membership of each tenant role it provisions);
-- SET SESSION AUTHORIZATION, used before, needs a superuser.
--
-- chukan_tenant() is therefore the tenant of the *current* role when that is a tenant
-- role, else of the login role (session_user) as before.  Isolation stays as strict: a
-- tenant's login can SET ROLE only to roles it is a member of (chukan_app, no tenant's),
-- so for a tenant's own sessions the answer is the same as before; the current role
-- switches to the owner inside SECURITY DEFINER functions, where the fallback to the
-- login role keeps the old answer.
--
-- The lookup is SECURITY DEFINER (tenant roles cannot read `tenants`) and takes both
-- names as arguments, since inside it current_user is its owner; chukan_tenant() itself
-- is a plain SQL function the planner inlines into every policy.
CREATE FUNCTION chukan_tenant_of(current_role_name name, login_role_name name) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$ SELECT coalesce(
              (SELECT tenant FROM public.tenants WHERE role_name = current_role_name),
              (SELECT tenant FROM public.tenants WHERE role_name = login_role_name)) $$;
REVOKE ALL ON FUNCTION chukan_tenant_of(name, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chukan_tenant_of(name, name) TO chukan_app;

CREATE OR REPLACE FUNCTION chukan_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY INVOKER
    AS $$ SELECT public.chukan_tenant_of(current_user, session_user) $$;

-- The record chain's SECURITY DEFINER functions run as the owner, whose current role is
-- no tenant once the caller is an owner session acting with SET ROLE.  They reach the
-- chain heads and the default partition through a policy of the owner's own (the owner
-- could switch row-level security off anyway); the tenant of a new record is still
-- checked by provision_records' own policy after its BEFORE trigger, and a tenant role is
-- never a member of the owner, so no tenant's session gains anything.
CREATE POLICY owner_maintenance ON record_chain_heads TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY owner_maintenance ON provision_records_default TO CURRENT_USER
    USING (true);

-- A server refuses to start on unapplied migrations; it checks with its own login.
GRANT SELECT ON schema_migrations TO chukan_app;
