-- realtime-bridge: the generic capture triggers and track() / untrack().
--
-- The triggers copy each change into the outbox inside the writer's own
-- transaction, so the event exists if and only if the change commits.
-- INSERT and DELETE are captured per statement through transition tables
-- (one outbox row per 1000 rows: a 100-row INSERT costs one extra insert,
-- not a hundred); UPDATE per row, so each new row stays paired with its old
-- one.
-- NOTIFY is only a wake-up, and only sent when a bridge is asleep waiting
-- for one: the sleeping reader holds an exclusive advisory lock on
-- wake_key(); a writer that can take the shared lock knows the reader is
-- busy draining (and will drain again before it sleeps), so it does not
-- pay for pg_notify's commit-time serialisation.

CREATE OR REPLACE FUNCTION realtime_bridge.wake_key()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 7305424201::bigint $$;

CREATE OR REPLACE FUNCTION realtime_bridge.wake()
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(realtime_bridge.wake_key()) THEN
        PERFORM pg_notify('realtime_bridge_wake', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION realtime_bridge.capture()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    INSERT INTO realtime_bridge.outbox (schema_name, table_name, operation, record, old_record)
    VALUES (
        TG_TABLE_SCHEMA,
        TG_TABLE_NAME,
        TG_OP,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END
    );
    PERFORM realtime_bridge.wake();
    RETURN NULL;
END
$$;

-- Statement-level capture of INSERT (new_rows) and DELETE (old_rows): one
-- outbox row per chunk of 1000 rows, records as JSON arrays in row order.
CREATE OR REPLACE FUNCTION realtime_bridge.capture_statement()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO realtime_bridge.outbox
            (schema_name, table_name, operation, record, changes, batch)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'INSERT', jsonb_agg(r ORDER BY n), count(*), true
        FROM (SELECT to_jsonb(t) AS r, row_number() OVER () AS n FROM new_rows t) AS numbered
        GROUP BY (n - 1) / 1000
        ORDER BY (n - 1) / 1000;
    ELSE
        INSERT INTO realtime_bridge.outbox
            (schema_name, table_name, operation, old_record, changes, batch)
        SELECT TG_TABLE_SCHEMA, TG_TABLE_NAME, 'DELETE', jsonb_agg(r ORDER BY n), count(*), true
        FROM (SELECT to_jsonb(t) AS r, row_number() OVER () AS n FROM old_rows t) AS numbered
        GROUP BY (n - 1) / 1000
        ORDER BY (n - 1) / 1000;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM realtime_bridge.wake();
    END IF;
    RETURN NULL;
END
$$;

-- The capture triggers on one table, whatever they are called.
CREATE OR REPLACE FUNCTION realtime_bridge.capture_triggers(tbl regclass)
RETURNS SETOF text
LANGUAGE sql
STABLE
SET search_path = ''
AS $$
    SELECT t.tgname::text
    FROM pg_catalog.pg_trigger t
    WHERE t.tgrelid = tbl
      AND t.tgfoid IN ('realtime_bridge.capture()'::regprocedure,
                       'realtime_bridge.capture_statement()'::regprocedure)
      AND NOT t.tgisinternal
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
END
$$;

-- Start capturing a table. The INSERT trigger is named `trigger_name`
-- (default realtime_bridge_capture); the UPDATE and DELETE triggers add
-- _update and _delete to that name.
CREATE OR REPLACE FUNCTION realtime_bridge.track(tbl regclass, trigger_name text DEFAULT NULL)
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
    PERFORM realtime_bridge.untrack(tbl);
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

-- The tables currently captured, for the bridge's channel list.
DROP VIEW IF EXISTS realtime_bridge.tracked_tables;
CREATE VIEW realtime_bridge.tracked_tables AS
SELECT DISTINCT n.nspname AS schema_name, c.relname AS table_name
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgfoid IN ('realtime_bridge.capture()'::regprocedure,
                   'realtime_bridge.capture_statement()'::regprocedure)
  AND NOT t.tgisinternal;

-- Publish an event through the outbox (what `POST /api/broadcast` and the
-- Python `broadcast()` call). Inside the caller's transaction, the event
-- exists if and only if that transaction commits. Returns the outbox id.
CREATE OR REPLACE FUNCTION realtime_bridge.broadcast(channel text, event text, payload jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO realtime_bridge.outbox (operation, record, channel, event)
    VALUES ('BROADCAST', payload, broadcast.channel, broadcast.event)
    RETURNING id INTO new_id;
    PERFORM realtime_bridge.wake();
    RETURN new_id;
END
$$;
