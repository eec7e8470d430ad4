-- realtime-bridge: what private channels are authorized against, as on Supabase.
--
-- Supabase authorizes private channels (`config.private = true`) with RLS
-- policies on realtime.messages: a SELECT policy lets a user receive on a
-- topic, an INSERT policy lets them send. Policies read the topic with
-- realtime.topic() and the caller with auth.uid() / auth.jwt() / auth.role().
-- The bridge evaluates those policies in Postgres the way Supabase does
-- (probe rows, `set_config('role', ...)` and `request.jwt.claims` inside a
-- transaction that is rolled back), so the same policies work unchanged.
--
-- On a Supabase database all of this already exists and nothing here
-- touches it: each object is created only where it is absent. On plain
-- Postgres this creates the minimum: the roles anon / authenticated /
-- service_role (NOLOGIN), the realtime schema, realtime.messages with RLS
-- enabled (no policy: private channels admit nobody until you add one),
-- realtime.topic(), and auth.uid() / auth.jwt() / auth.role() reading the
-- same settings PostgREST and Supabase set.
--
-- Idempotent: safe to re-apply, on plain Postgres 15+ and on Supabase.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
        -- The bridge switches to these roles (set_config('role', ...)) to
        -- evaluate policies; a superuser may anyway, anyone else needs membership.
        IF NOT pg_has_role(current_user, name, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', name, current_user);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'realtime-bridge: cannot grant % to %; private channels '
                    'will refuse users of that role', name, current_user;
            END;
        END IF;
    END LOOP;
END
$$;

CREATE SCHEMA IF NOT EXISTS realtime;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;

DO $$
BEGIN
    IF to_regclass('realtime.messages') IS NULL THEN
        -- Supabase's columns (its table is partitioned by day; the bridge only
        -- ever writes probe rows here, inside transactions it rolls back).
        CREATE TABLE realtime.messages (
            topic          text NOT NULL,
            extension      text NOT NULL,
            payload        jsonb,
            event          text,
            private        boolean DEFAULT false,
            updated_at     timestamp NOT NULL DEFAULT now(),
            inserted_at    timestamp NOT NULL DEFAULT now(),
            id             uuid NOT NULL DEFAULT gen_random_uuid(),
            binary_payload bytea,
            PRIMARY KEY (id, inserted_at),
            CHECK (payload IS NULL OR binary_payload IS NULL)
        );
        ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;
        GRANT SELECT, INSERT, UPDATE ON realtime.messages TO anon, authenticated, service_role;
        COMMENT ON TABLE realtime.messages IS
            'Private channel authorization (RLS: SELECT = receive, INSERT = send), as on Supabase.';
    END IF;
END
$$;

DO $$
BEGIN
    IF to_regprocedure('realtime.topic()') IS NULL THEN
        CREATE FUNCTION realtime.topic() RETURNS text
        LANGUAGE sql STABLE
        AS $f$ SELECT nullif(current_setting('realtime.topic', true), '')::text $f$;
        GRANT EXECUTE ON FUNCTION realtime.topic() TO anon, authenticated, service_role;
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- Supabase's definitions: the claims come from `request.jwt.claims` (or the
-- older per-claim settings). auth.uid() is a uuid, as there, so policies
-- written for Supabase port unchanged; compare text ids with auth.jwt()->>'sub'.
DO $$
BEGIN
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
        GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $f$;
        GRANT EXECUTE ON FUNCTION auth.role() TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $f$;
        GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated, service_role;
    END IF;
END
$$;
