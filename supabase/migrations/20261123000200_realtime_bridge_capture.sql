-- realtime-bridge: the generic capture trigger and track() / untrack().
--
-- The trigger copies the change into the outbox inside the writer's own
-- transaction, so the event exists if and only if the change commits.
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

-- Start capturing a table. The trigger name defaults to
-- realtime_bridge_capture; pass one to match your own naming.
CREATE OR REPLACE FUNCTION realtime_bridge.track(tbl regclass, trigger_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    existing text;
    wanted text := coalesce(trigger_name, 'realtime_bridge_capture');
BEGIN
    SELECT t.tgname INTO existing
    FROM pg_catalog.pg_trigger t
    WHERE t.tgrelid = tbl
      AND t.tgfoid = 'realtime_bridge.capture()'::regprocedure
      AND NOT t.tgisinternal;
    IF existing = wanted THEN
        RETURN;
    END IF;
    IF existing IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER %I ON %s', existing, tbl);
    END IF;
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION realtime_bridge.capture()',
        wanted, tbl
    );
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
    FOR existing IN
        SELECT t.tgname
        FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = tbl
          AND t.tgfoid = 'realtime_bridge.capture()'::regprocedure
          AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', existing, tbl);
    END LOOP;
END
$$;

-- The tables currently captured, for the bridge's channel list.
CREATE OR REPLACE VIEW realtime_bridge.tracked_tables AS
SELECT DISTINCT n.nspname AS schema_name, c.relname AS table_name, t.tgname AS trigger_name
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgfoid = 'realtime_bridge.capture()'::regprocedure
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
