-- Two SQL functions were parsed and planned again by every statement that used them
-- (a profile of PostgreSQL under the end-to-end bench put a third of its CPU there):
--
-- * chukan_tenant_of, behind every tenant policy: a SECURITY DEFINER SQL function is
--   never inlined, and its body was parsed and planned once per statement.  As
--   PL/pgSQL its plans are cached for the session (measured: 146 -> 45 us of PostgreSQL
--   CPU per call over a bare SELECT).  Same answer, same owner, grants and search_path.
-- * chukan_canon, called 18 times per record by the chain trigger: declared IMMUTABLE
--   over convert_to (which is STABLE), so the planner would not inline it and ran each
--   call as a statement of its own.  Declared STABLE, which is what it is, it is inlined
--   into chukan_record_canonical, itself inlined into the trigger's cached expression.
--   The bytes it returns are unchanged; the chain verifies as before.
CREATE OR REPLACE FUNCTION chukan_tenant_of(current_role_name name, login_role_name name)
    RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
    AS $$
BEGIN
    RETURN coalesce(
        (SELECT t.tenant FROM public.tenants t WHERE t.role_name = current_role_name),
        (SELECT t.tenant FROM public.tenants t WHERE t.role_name = login_role_name));
END
$$;

ALTER FUNCTION chukan_canon(text, text) STABLE;
ALTER FUNCTION chukan_chain_genesis(text) STABLE;
