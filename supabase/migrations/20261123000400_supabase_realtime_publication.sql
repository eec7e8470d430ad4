-- realtime-bridge: the `supabase_realtime` publication, so hosted Supabase
-- Realtime sees the same tables. Created empty when absent; later
-- migrations add tables with realtime_bridge.publish().

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime') THEN
        CREATE PUBLICATION supabase_realtime;
    END IF;
END
$$;

-- Adds a table to supabase_realtime unless it is already there
-- (or the publication is FOR ALL TABLES).
CREATE OR REPLACE FUNCTION realtime_bridge.publish(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime' AND puballtables) THEN
        RETURN;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
        WHERE p.pubname = 'supabase_realtime' AND pr.prrelid = tbl
    ) THEN
        EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE %s', tbl);
    END IF;
END
$$;
