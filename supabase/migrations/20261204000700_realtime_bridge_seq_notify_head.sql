-- realtime-bridge: the followers' wake-up names the log's new head.
--
-- sequence_rows() notified followers with an empty payload. With the Redis
-- change stream a follower reads the stream, not the log, and keeps the
-- NOTIFY only as a check: the payload now carries the sequencer's last_seq
-- after the pass, so a follower knows how far the stream must bring it and
-- reads the log only when it does not (the leader cannot reach Redis).
-- Everything else is as in 20261203000100_realtime_bridge_sequence_pass.sql.

CREATE OR REPLACE FUNCTION realtime_bridge.sequence_rows(max_changes integer)
RETURNS TABLE (
    id bigint,
    seq bigint,
    operation text,
    schema_name text,
    table_name text,
    record jsonb,
    old_record jsonb,
    created_at timestamptz,
    channel text,
    event text,
    changes integer,
    batch boolean
)
LANGUAGE sql
VOLATILE
SET search_path = ''
AS $$
WITH candidates AS MATERIALIZED (
    SELECT o.id, o.changes FROM realtime_bridge.outbox o
    WHERE o.seq IS NULL
    ORDER BY o.id
    LIMIT greatest(max_changes, 1)
), chosen AS MATERIALIZED (
    SELECT c.id, c.changes, c.running - c.changes AS before
    FROM (
        SELECT id, changes, sum(changes) OVER (ORDER BY id) AS running FROM candidates
    ) c
    WHERE c.running - c.changes < greatest(max_changes, 1)
), counter AS (
    UPDATE realtime_bridge.sequencer s
    SET last_seq = s.last_seq + b.n
    FROM (SELECT sum(changes) AS n FROM chosen) b
    WHERE b.n > 0
    RETURNING s.last_seq - b.n AS base, s.last_seq AS head
), wake AS MATERIALIZED (
    SELECT pg_notify('realtime_bridge_seq', counter.head::text) AS sent FROM counter
)
UPDATE realtime_bridge.outbox o
SET seq = counter.base + chosen.before + 1, sequenced_at = clock_timestamp()
FROM chosen, counter, wake
WHERE o.id = chosen.id
RETURNING coalesce(o.ref, o.id), o.seq, o.operation, o.schema_name, o.table_name, o.record,
          o.old_record, o.created_at, o.channel, o.event, o.changes, o.batch
$$;
