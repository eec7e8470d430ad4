-- realtime-bridge: row-level security for postgres_changes (ROW_SECURITY=<table>=rls).
--
-- realtime_bridge.visible_rows(tbl, rows, viewers) answers, in one statement,
-- which of a batch of row images of `tbl` each viewer could SELECT under the
-- table's RLS policies. A viewer is {"role": ..., "claims": {...}}: the
-- function switches to that role and sets request.jwt.claims (and the older
-- per-claim settings auth.uid() / auth.role() read first) local to the
-- transaction, as PostgREST and Supabase do, then evaluates the policies
-- against the row images themselves (jsonb_populate_record), not against the
-- table, which may have changed since the change committed.
--
-- What Postgres would do for `SELECT * FROM tbl` as that role is what is
-- applied, read from the catalog on every call (no cache to go stale):
-- * no SELECT privilege on the table: nothing is visible;
-- * a superuser, a BYPASSRLS role, or the table's owner (unless FORCE ROW
--   LEVEL SECURITY): everything;
-- * RLS not enabled: everything;
-- * else the SELECT (and ALL) policies that apply to the role: permissive
--   ones OR'd, restrictive ones AND'd, no permissive policy = nothing.
-- A policy that raises for a row (a uuid cast of a sub that is no uuid)
-- makes that row invisible to that viewer, as the SELECT would have failed.
--
-- Returns one row per viewer: its index in `viewers` (1-based) and the
-- 1-based indexes of the rows it may see.
--
-- Idempotent: safe to re-apply, on plain Postgres 15+ and on Supabase.

CREATE OR REPLACE FUNCTION realtime_bridge.visible_rows(
    tbl regclass, rows jsonb[], viewers jsonb[]
)
RETURNS TABLE (viewer integer, visible integer[])
LANGUAGE plpgsql
VOLATILE
-- No SET search_path: the policies are deparsed and run under the caller's
-- search_path, as the user's own SELECT would resolve them.
AS $$
DECLARE
    rel record;
    original_role text := current_setting('role');
    all_rows integer[] := ARRAY(SELECT generate_series(1, coalesce(cardinality(rows), 0)));
    v jsonb;
    vi integer := 0;
    viewer_role text;
    predicate text;
    last_role text := NULL;
    seen integer[];
    ri integer;
    ok boolean;
    sees_all boolean;
    sees_none boolean;
BEGIN
    SELECT c.relname, c.relowner, c.relrowsecurity, c.relforcerowsecurity
    INTO rel
    FROM pg_catalog.pg_class c WHERE c.oid = tbl;
    FOREACH v IN ARRAY coalesce(viewers, '{}') LOOP
        vi := vi + 1;
        viewer := vi;
        viewer_role := v ->> 'role';
        -- What holds for the whole role is worked out once per run of viewers
        -- of that role (the bridge sends them grouped by role).
        IF last_role IS DISTINCT FROM viewer_role THEN
            last_role := viewer_role;
            predicate := NULL;
            IF viewer_role IS NULL
               OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = viewer_role)
               OR NOT pg_catalog.has_table_privilege(viewer_role, tbl, 'SELECT') THEN
                sees_all := false;
                sees_none := true;
            ELSIF NOT rel.relrowsecurity
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                          WHERE rolname = viewer_role AND (rolsuper OR rolbypassrls))
               OR (NOT rel.relforcerowsecurity
                   AND pg_catalog.pg_has_role(viewer_role, rel.relowner, 'USAGE')) THEN
                sees_all := true;
                sees_none := false;
            ELSE
                sees_all := false;
                SELECT
                    CASE WHEN bool_or(p.polpermissive) THEN
                        '((' || string_agg(CASE WHEN p.polpermissive
                                  THEN '(' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'true') || ')'
                                  END, ' OR ') || ')'
                        || coalesce(' AND ' || string_agg(CASE WHEN NOT p.polpermissive
                                  THEN '(' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'true') || ')'
                                  END, ' AND '), '')
                        || ')'
                    END
                INTO predicate
                FROM pg_catalog.pg_policy p
                WHERE p.polrelid = tbl
                  AND p.polcmd IN ('r', '*')
                  AND (0::oid = ANY (p.polroles)
                       OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r (oid)
                                  WHERE pg_catalog.pg_has_role(viewer_role, r.oid, 'USAGE')));
                -- RLS on and no permissive policy for this role: default deny.
                sees_none := predicate IS NULL;
            END IF;
        END IF;
        IF sees_none THEN
            visible := '{}';
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF sees_all THEN
            visible := all_rows;
            RETURN NEXT;
            CONTINUE;
        END IF;
        BEGIN
            PERFORM pg_catalog.set_config('role', viewer_role, true),
                    pg_catalog.set_config('request.jwt.claims', coalesce(v -> 'claims', '{}')::text, true),
                    pg_catalog.set_config('request.jwt.claim.sub', coalesce(v -> 'claims' ->> 'sub', ''), true),
                    pg_catalog.set_config('request.jwt.claim.role', viewer_role, true),
                    pg_catalog.set_config('request.jwt.claim', '', true);
        EXCEPTION WHEN OTHERS THEN
            -- This role may not become the viewer's (not a member): it sees nothing.
            RAISE WARNING 'realtime-bridge: cannot evaluate row security as role % (%)',
                viewer_role, SQLERRM;
            visible := '{}';
            RETURN NEXT;
            CONTINUE;
        END;
        BEGIN
            EXECUTE format(
                'SELECT coalesce(array_agg(r.i ORDER BY r.i), ''{}'') '
                'FROM unnest($1::jsonb[]) WITH ORDINALITY AS r (image, i) '
                'CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, r.image) AS %I '
                'WHERE coalesce(%s, false)',
                tbl, rel.relname, predicate)
            INTO visible USING rows;
        EXCEPTION WHEN OTHERS THEN
            -- One row's policy failed: ask row by row, a failing row is invisible.
            seen := '{}';
            FOR ri IN 1 .. coalesce(cardinality(rows), 0) LOOP
                BEGIN
                    EXECUTE format(
                        'SELECT coalesce(%s, false) FROM jsonb_populate_record(NULL::%s, $1) AS %I',
                        predicate, tbl, rel.relname)
                    INTO ok USING rows[ri];
                    IF ok THEN
                        seen := seen || ri;
                    END IF;
                EXCEPTION WHEN OTHERS THEN
                    NULL;
                END;
            END LOOP;
            visible := seen;
        END;
        PERFORM pg_catalog.set_config('role', original_role, true);
        RETURN NEXT;
    END LOOP;
    PERFORM pg_catalog.set_config('role', original_role, true),
            pg_catalog.set_config('request.jwt.claims', '', true),
            pg_catalog.set_config('request.jwt.claim.sub', '', true),
            pg_catalog.set_config('request.jwt.claim.role', '', true);
END
$$;

-- Invoker's rights (a caller can only become roles it already may), but
-- still the bridge's own: nobody else needs it.
REVOKE ALL ON FUNCTION realtime_bridge.visible_rows(regclass, jsonb[], jsonb[]) FROM PUBLIC;
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format(
                'REVOKE ALL ON FUNCTION realtime_bridge.visible_rows(regclass, jsonb[], jsonb[]) FROM %I',
                name);
        END IF;
    END LOOP;
END
$$;
