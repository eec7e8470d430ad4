-- realtime-bridge: how long the outbox keeps delivered changes.
--
-- The window is both the audit log's depth and how far back a client can
-- resume with `since`; older requests get `resync_required`.
-- Change it with:
--   UPDATE realtime_bridge.settings SET value = '7 days' WHERE key = 'retention';

INSERT INTO realtime_bridge.settings (key, value)
VALUES ('retention', '24 hours')
ON CONFLICT (key) DO NOTHING;

-- Deletes numbered rows older than the retention window, in bounded
-- batches so a large backlog never holds a long lock. Returns the count.
CREATE OR REPLACE FUNCTION realtime_bridge.prune(batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    keep interval;
    removed bigint := 0;
    n bigint;
BEGIN
    SELECT value::interval INTO keep FROM realtime_bridge.settings WHERE key = 'retention';
    keep := coalesce(keep, interval '24 hours');
    LOOP
        DELETE FROM realtime_bridge.outbox
        WHERE id IN (
            SELECT id FROM realtime_bridge.outbox
            WHERE seq IS NOT NULL AND created_at < now() - keep
            ORDER BY id
            LIMIT batch_size
        );
        GET DIAGNOSTICS n = ROW_COUNT;
        removed := removed + n;
        EXIT WHEN n < batch_size;
    END LOOP;
    RETURN removed;
END
$$;
