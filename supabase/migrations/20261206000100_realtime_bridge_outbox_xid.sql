-- realtime-bridge: the log remembers which transaction wrote each change.
--
-- A snapshot (GET /api/channels/{channel}/snapshot) reads the rows in one
-- transaction and returns that transaction's Postgres snapshot as a token
-- beside its seq. A subscription given both skips exactly the changes after
-- the seq whose transaction the snapshot already saw: so it needs each
-- change's transaction id. `xid` holds it as the 32-bit id Postgres's WAL
-- names (pgoutput's BEGIN) and the trigger path fills it in the writer's
-- own transaction; the bridge widens it against the snapshot's 64-bit ids.
-- Rows logged before this migration have none (never skipped). Idempotent.

-- Two steps, so that existing rows are not rewritten: a column added with a
-- volatile default would be filled row by row.
ALTER TABLE realtime_bridge.outbox ADD COLUMN IF NOT EXISTS xid bigint;
ALTER TABLE realtime_bridge.outbox
    ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint % 4294967296);

-- The WAL leader logs a change a moment after Postgres wrote its commit
-- record, and Postgres writes that record slightly before the writer leaves
-- the list of running transactions. A snapshot taken in between would see the
-- log's row but not the writer's: the seq would claim a change the rows lack.
-- The log write calls this first, so it commits only once every writer of the
-- batch is visible to new snapshots (and gives up waiting after `patience`
-- seconds rather than hold the log back: such a writer is long gone or never
-- was). 32-bit ids are widened against the current snapshot's xmax.
CREATE OR REPLACE FUNCTION realtime_bridge.await_visible(xids bigint[], patience float8 DEFAULT 5)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog
AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => patience);
BEGIN
    IF xids IS NULL OR cardinality(xids) = 0 THEN
        RETURN true;
    END IF;
    -- Each statement of a volatile function takes a fresh snapshot.
    WHILE EXISTS (
        SELECT 1
        FROM (SELECT pg_current_snapshot() AS snap) s,
             LATERAL (SELECT pg_snapshot_xmax(s.snap)::text::bigint AS xmax) m,
             unnest(xids) AS x
        WHERE x IS NOT NULL
          AND NOT pg_visible_in_snapshot(
                (m.xmax - ((m.xmax - x) % 4294967296 + 4294967296) % 4294967296)::text::xid8,
                s.snap)
    ) LOOP
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.0005);
    END LOOP;
    RETURN true;
END;
$$;

-- The sequencer's passes return each row's xid too: a changed result type,
-- so under new names (CREATE OR REPLACE cannot change it, and the older files
-- must stay re-runnable as they are). The old functions stay for bridges of
-- the previous version during a rolling deploy. Otherwise as in
-- 20261204000700_realtime_bridge_seq_notify_head.sql (sequence_rows) and
-- 20261203000100_realtime_bridge_sequence_pass.sql (sequence_pass).

CREATE OR REPLACE FUNCTION realtime_bridge.sequence_rows_with_xid(max_changes integer)
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
    batch boolean,
    xid bigint
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
          o.old_record, o.created_at, o.channel, o.event, o.changes, o.batch, o.xid
$$;

CREATE OR REPLACE FUNCTION realtime_bridge.sequence_pass_with_xid(max_changes integer, holding boolean)
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
    batch boolean,
    xid bigint
)
LANGUAGE plpgsql
VOLATILE
SET search_path = ''
-- The batch is small: a nested loop over the primary key is always right (a
-- large analysed outbox can otherwise tempt the planner into a merge join).
SET enable_mergejoin = off
SET enable_hashjoin = off
AS $$
#variable_conflict use_column
DECLARE
    key constant bigint := realtime_bridge.wake_key();
    before bigint;
    numbered bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'realtime_bridge.sequence_pass_with_xid() needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF holding THEN
        PERFORM pg_advisory_unlock(key);
    END IF;
    SELECT s.last_seq INTO before FROM realtime_bridge.sequencer s;
    RETURN QUERY SELECT * FROM realtime_bridge.sequence_rows_with_xid(max_changes);
    SELECT s.last_seq - before INTO numbered FROM realtime_bridge.sequencer s;
    IF numbered >= max_changes THEN
        -- A full batch: there may be more; do not try to sleep.
        id := NULL; seq := NULL; operation := 'STATE'; event := 'awake';
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT pg_try_advisory_lock(key) THEN
        -- Writers hold it shared: they are mid-transaction and did not notify.
        id := NULL; seq := NULL; operation := 'STATE'; event := 'busy';
        RETURN NEXT;
        RETURN;
    END IF;
    -- The final drain: rows committed before we took the lock (a new snapshot).
    RETURN QUERY SELECT * FROM realtime_bridge.sequence_rows_with_xid(max_changes - numbered::integer);
    id := NULL; seq := NULL; operation := 'STATE';
    IF FOUND THEN
        PERFORM pg_advisory_unlock(key);
        event := 'awake';
    ELSE
        event := 'asleep';
    END IF;
    RETURN NEXT;
END
$$;
