-- realtime-bridge: capture from the write-ahead log (logical replication).
--
-- Where the role may replicate and wal_level is logical, the leading bridge
-- reads the `supabase_realtime` publication through a `pgoutput` slot and
-- appends numbered changes to the outbox itself, in batches; the writers pay
-- nothing (no trigger, no NOTIFY). The capture mode lives in
-- realtime_bridge.settings ('capture': 'triggers' or 'wal') so that track(),
-- untrack() and broadcast() do the right thing for the running bridge:
--
--   triggers: track() installs the capture triggers (and publishes the table);
--             broadcast() inserts into the outbox.
--   wal:      track() publishes the table with REPLICA IDENTITY FULL (old rows
--             for UPDATE/DELETE events and row scoping); broadcast() emits a
--             transactional logical message, which reaches clients in commit
--             order with its transaction's changes, and only if it commits.
--
-- Switching is done by the bridge with switch_to_wal() / switch_to_triggers(),
-- under an exclusive advisory lock that every broadcast() takes shared, so no
-- event falls between the two ways of capturing.

INSERT INTO realtime_bridge.settings (key, value)
VALUES ('capture', 'triggers')
ON CONFLICT (key) DO NOTHING;

-- What broadcast() returned for an event the WAL leader logged (minus the
-- LSN of its logical message), so that its publisher learns its seq.
ALTER TABLE realtime_bridge.outbox ADD COLUMN IF NOT EXISTS ref bigint;

-- Where the WAL reader is: the commit LSN of the last transaction whose
-- changes are (partly) in the outbox, and how many of its changes are. The
-- leader updates it in the same statement that appends a batch, so after a
-- crash it skips exactly what was already logged. `switch_pending`: changes
-- before the switch marker were captured by the triggers; skip them.
CREATE TABLE IF NOT EXISTS realtime_bridge.wal_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    commit_lsn     pg_lsn,
    logged         integer NOT NULL DEFAULT 0,
    switch_pending boolean NOT NULL DEFAULT false
);

INSERT INTO realtime_bridge.wal_state (singleton) VALUES (true)
ON CONFLICT (singleton) DO NOTHING;

CREATE OR REPLACE FUNCTION realtime_bridge.mode_key()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 7305424202::bigint $$;

CREATE OR REPLACE FUNCTION realtime_bridge.capture_mode()
RETURNS text
LANGUAGE sql STABLE
SET search_path = ''
AS $$
    SELECT coalesce(
        (SELECT value FROM realtime_bridge.settings WHERE key = 'capture'), 'triggers'
    )
$$;

-- Publish an event (POST /api/broadcast, the Python broadcast()). Inside the
-- caller's transaction, the event exists if and only if it commits. Returns
-- the outbox id with the triggers; with the WAL (no row yet) minus the LSN of
-- its logical message, which the leader stores in the row's `ref`.
CREATE OR REPLACE FUNCTION realtime_bridge.broadcast(channel text, event text, payload jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(realtime_bridge.mode_key());
    IF realtime_bridge.capture_mode() = 'wal' THEN
        RETURN -(pg_logical_emit_message(
            true,
            'realtime_bridge',
            jsonb_build_object('channel', broadcast.channel, 'event', broadcast.event,
                               'payload', payload)::text
        ) - '0/0'::pg_lsn)::bigint;
    END IF;
    INSERT INTO realtime_bridge.outbox (operation, record, channel, event)
    VALUES ('BROADCAST', payload, broadcast.channel, broadcast.event)
    RETURNING id INTO new_id;
    PERFORM realtime_bridge.wake();
    RETURN new_id;
END
$$;

-- The capture triggers of one table (the trigger path), as before.
CREATE OR REPLACE FUNCTION realtime_bridge.install_triggers(tbl regclass, trigger_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    base text := coalesce(trigger_name, 'realtime_bridge_capture');
    wanted text[] := ARRAY[base, base || '_delete', base || '_update'];
    existing text[];
BEGIN
    SELECT coalesce(array_agg(name ORDER BY name), '{}') INTO existing
    FROM realtime_bridge.capture_triggers(tbl) AS name;
    IF existing = wanted THEN
        RETURN;
    END IF;
    FOR base IN SELECT * FROM realtime_bridge.capture_triggers(tbl) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', base, tbl);
    END LOOP;
    base := coalesce(trigger_name, 'realtime_bridge_capture');
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION realtime_bridge.capture_statement()',
        base, tbl
    );
    EXECUTE format(
        'CREATE TRIGGER %I AFTER UPDATE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION realtime_bridge.capture()',
        base || '_update', tbl
    );
    EXECUTE format(
        'CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION realtime_bridge.capture_statement()',
        base || '_delete', tbl
    );
END
$$;

-- Old rows in UPDATE and DELETE messages; a table this role does not own
-- keeps its identity (its events then carry only the key of the old row).
CREATE OR REPLACE FUNCTION realtime_bridge.full_identity(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF (SELECT relreplident FROM pg_catalog.pg_class WHERE oid = tbl) <> 'f' THEN
        EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', tbl);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'realtime-bridge: cannot set REPLICA IDENTITY FULL on % (%); its UPDATE and DELETE events carry only the old key', tbl, SQLERRM;
END
$$;

-- Start capturing a table: it joins the publication (the configuration on
-- every path); with the triggers it also gets the capture triggers.
CREATE OR REPLACE FUNCTION realtime_bridge.track(tbl regclass, trigger_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM realtime_bridge.publish(tbl);
    IF realtime_bridge.capture_mode() = 'wal' THEN
        PERFORM realtime_bridge.full_identity(tbl);
    ELSE
        PERFORM realtime_bridge.install_triggers(tbl, trigger_name);
    END IF;
END
$$;

-- Stop capturing a table (its past changes stay in the outbox).
CREATE OR REPLACE FUNCTION realtime_bridge.untrack(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    existing text;
BEGIN
    FOR existing IN SELECT * FROM realtime_bridge.capture_triggers(tbl) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', existing, tbl);
    END LOOP;
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
        WHERE p.pubname = 'supabase_realtime' AND pr.prrelid = tbl
    ) THEN
        EXECUTE format('ALTER PUBLICATION supabase_realtime DROP TABLE %s', tbl);
    END IF;
END
$$;

-- The tables captured on either path: those with the capture triggers and
-- those in the publication (never the bridge's own).
DROP VIEW IF EXISTS realtime_bridge.tracked_tables;
CREATE VIEW realtime_bridge.tracked_tables AS
SELECT DISTINCT n.nspname AS schema_name, c.relname AS table_name
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgfoid IN ('realtime_bridge.capture()'::regprocedure,
                   'realtime_bridge.capture_statement()'::regprocedure)
  AND NOT t.tgisinternal
UNION
SELECT pt.schemaname::text, pt.tablename::text
FROM pg_catalog.pg_publication_tables pt
WHERE pt.pubname = 'supabase_realtime' AND pt.schemaname <> 'realtime_bridge';

-- From the triggers to the WAL, in one transaction: every captured table
-- joins the publication with full identity and loses its triggers; the
-- marker message tells the reader where the triggers' changes end.
CREATE OR REPLACE FUNCTION realtime_bridge.switch_to_wal()
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    tbl regclass;
BEGIN
    PERFORM pg_advisory_xact_lock(realtime_bridge.mode_key());
    FOR tbl IN
        SELECT format('%I.%I', schema_name, table_name)::regclass
        FROM realtime_bridge.tracked_tables
    LOOP
        PERFORM realtime_bridge.publish(tbl);
        PERFORM realtime_bridge.full_identity(tbl);
        PERFORM realtime_bridge.untrack_triggers(tbl);
    END LOOP;
    UPDATE realtime_bridge.settings SET value = 'wal' WHERE key = 'capture';
    UPDATE realtime_bridge.wal_state SET switch_pending = true;
    PERFORM pg_logical_emit_message(true, 'realtime_bridge.switch', '');
END
$$;

CREATE OR REPLACE FUNCTION realtime_bridge.untrack_triggers(tbl regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    existing text;
BEGIN
    FOR existing IN SELECT * FROM realtime_bridge.capture_triggers(tbl) LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', existing, tbl);
    END LOOP;
END
$$;

-- Back to the triggers (CAPTURE=triggers on a database that streamed the
-- WAL): every published table gets the capture triggers.
CREATE OR REPLACE FUNCTION realtime_bridge.switch_to_triggers()
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    tbl regclass;
BEGIN
    PERFORM pg_advisory_xact_lock(realtime_bridge.mode_key());
    UPDATE realtime_bridge.settings SET value = 'triggers' WHERE key = 'capture';
    FOR tbl IN
        SELECT format('%I.%I', schema_name, table_name)::regclass
        FROM realtime_bridge.tracked_tables
    LOOP
        PERFORM realtime_bridge.install_triggers(tbl);
    END LOOP;
END
$$;
