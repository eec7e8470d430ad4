-- realtime-bridge: Supabase "Broadcast from Database" for captured changes.
--
-- On hosted Supabase, with
--   UPDATE realtime_bridge.settings SET value = 'on' WHERE key = 'broadcast_from_database';
-- every captured change (and every event published through the bridge)
-- is also handed to realtime.send(), so apps that subscribe to Supabase
-- Realtime directly receive it without the bridge:
--   table change:   topic '<schema>.<table>', event INSERT|UPDATE|DELETE,
--                   payload {schema, table, operation, record, old_record}
--   published event: topic = its channel, event = its event, payload = it.
-- Messages are private unless broadcast_from_database_private is 'false'
-- (realtime.send's own default; raw rows are not for everyone): clients join
-- with `private: true` and need a SELECT policy on realtime.messages.
--
-- How: an AFTER INSERT trigger on realtime_bridge.outbox, which every
-- capture path writes to (row or statement level, tables tracked now or
-- later), rather than a change to the capture functions themselves. The trigger exists only while the setting is 'on' (a trigger on
-- the settings table adds or drops it), so writers pay nothing while it is
-- off. It checks at run time that realtime.send(jsonb,text,text,boolean)
-- exists, so it is harmless on plain Postgres, where this file applies too.
--
-- Idempotent: safe to re-apply; re-applying keeps the current setting.

INSERT INTO realtime_bridge.settings (key, value)
VALUES ('broadcast_from_database', 'off'),
       ('broadcast_from_database_private', 'true')
ON CONFLICT (key) DO NOTHING;

-- The outbox trigger: one realtime.send() per captured row. TG_ARGV[0] is
-- the `private` flag, fixed when the trigger is (re)created.
CREATE OR REPLACE FUNCTION realtime_bridge.send_to_realtime()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    topic text;
BEGIN
    -- Checked on every call, not once: the realtime schema may be dropped or
    -- (re)installed while the trigger exists.
    IF to_regprocedure('realtime.send(jsonb,text,text,boolean)') IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.operation = 'BROADCAST' THEN
        PERFORM realtime.send(
            coalesce(NEW.record, '{}'::jsonb), NEW.event, NEW.channel, TG_ARGV[0]::boolean
        );
        RETURN NULL;
    END IF;
    topic := NEW.schema_name || '.' || NEW.table_name;
    -- A statement-level capture writes the rows of a multi-row INSERT or
    -- DELETE as one JSON array (a captured row itself is always an object):
    -- one message per row, in order.
    IF jsonb_typeof(NEW.record) = 'array' OR jsonb_typeof(NEW.old_record) = 'array' THEN
        PERFORM realtime.send(
            jsonb_build_object(
                'schema', NEW.schema_name,
                'table', NEW.table_name,
                'operation', NEW.operation,
                'record', CASE WHEN NEW.record IS NOT NULL THEN item.value END,
                'old_record', CASE WHEN NEW.old_record IS NOT NULL THEN item.value END
            ),
            NEW.operation,
            topic,
            TG_ARGV[0]::boolean
        )
        FROM jsonb_array_elements(coalesce(NEW.record, NEW.old_record))
             WITH ORDINALITY AS item (value, n)
        ORDER BY item.n;
        RETURN NULL;
    END IF;
    PERFORM realtime.send(
        jsonb_build_object(
            'schema', NEW.schema_name,
            'table', NEW.table_name,
            'operation', NEW.operation,
            'record', NEW.record,
            'old_record', NEW.old_record
        ),
        NEW.operation,
        topic,
        TG_ARGV[0]::boolean
    );
    RETURN NULL;
END
$$;

-- Makes the outbox trigger match the settings: present (with the current
-- `private` flag) while broadcast_from_database is 'on', absent otherwise.
CREATE OR REPLACE FUNCTION realtime_bridge.apply_broadcast_from_database()
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    enabled boolean;
    private boolean;
    present boolean;
BEGIN
    SELECT lower(value) IN ('on', 'true') INTO enabled
    FROM realtime_bridge.settings WHERE key = 'broadcast_from_database';
    SELECT lower(value) NOT IN ('off', 'false') INTO private
    FROM realtime_bridge.settings WHERE key = 'broadcast_from_database_private';
    enabled := coalesce(enabled, false);
    private := coalesce(private, true);
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger t
        WHERE t.tgrelid = 'realtime_bridge.outbox'::regclass
          AND t.tgname = 'realtime_bridge_broadcast_from_database'
          AND t.tgargs = convert_to(private::text, 'UTF8') || '\x00'::bytea
    ) INTO present;
    IF present = enabled THEN
        -- Already as wanted: leave the outbox (and its lock) alone.
        RETURN enabled;
    END IF;
    DROP TRIGGER IF EXISTS realtime_bridge_broadcast_from_database ON realtime_bridge.outbox;
    IF enabled THEN
        EXECUTE format(
            'CREATE TRIGGER realtime_bridge_broadcast_from_database '
            'AFTER INSERT ON realtime_bridge.outbox '
            'FOR EACH ROW EXECUTE FUNCTION realtime_bridge.send_to_realtime(%L)',
            private::text
        );
    END IF;
    RETURN enabled;
END
$$;

CREATE OR REPLACE FUNCTION realtime_bridge.on_broadcast_setting()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM realtime_bridge.apply_broadcast_from_database();
    RETURN NULL;
END
$$;

-- Only changes to these two keys touch the outbox's triggers (which takes a
-- short lock on it); changing `retention` does not.
DROP TRIGGER IF EXISTS broadcast_setting_inserted ON realtime_bridge.settings;
CREATE TRIGGER broadcast_setting_inserted
    AFTER INSERT ON realtime_bridge.settings
    FOR EACH ROW
    WHEN (NEW.key IN ('broadcast_from_database', 'broadcast_from_database_private'))
    EXECUTE FUNCTION realtime_bridge.on_broadcast_setting();

DROP TRIGGER IF EXISTS broadcast_setting_updated ON realtime_bridge.settings;
CREATE TRIGGER broadcast_setting_updated
    AFTER UPDATE ON realtime_bridge.settings
    FOR EACH ROW
    WHEN (OLD.key IN ('broadcast_from_database', 'broadcast_from_database_private')
          OR NEW.key IN ('broadcast_from_database', 'broadcast_from_database_private'))
    EXECUTE FUNCTION realtime_bridge.on_broadcast_setting();

DROP TRIGGER IF EXISTS broadcast_setting_deleted ON realtime_bridge.settings;
CREATE TRIGGER broadcast_setting_deleted
    AFTER DELETE ON realtime_bridge.settings
    FOR EACH ROW
    WHEN (OLD.key IN ('broadcast_from_database', 'broadcast_from_database_private'))
    EXECUTE FUNCTION realtime_bridge.on_broadcast_setting();

SELECT realtime_bridge.apply_broadcast_from_database();
