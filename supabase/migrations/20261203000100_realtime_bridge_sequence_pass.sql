-- realtime-bridge: one sequencer pass of the trigger path in one round trip.
--
-- The sequencer (OutboxSource._lead) used to spend several statements per
-- wake-up: number the new rows, number again (nothing), try the wake lock,
-- the final drain, and unlock on the next wake-up. sequence_pass() does all
-- of it server-side, in one call:
--
--   1. `holding`: the caller slept holding the wake lock and was woken:
--      release it (writers stop notifying);
--   2. number the visible unnumbered rows (at most about max_changes);
--   3. unless that filled the batch, try the wake lock and, holding it, drain
--      once more (the final drain); if that found rows too, let go of the
--      lock again (we are not going to sleep).
--
-- It returns the numbered rows (the columns OutboxSource reads) followed by
-- one state row (seq NULL, operation 'STATE') whose event says what the
-- caller holds: 'asleep' (the wake lock: LISTEN and wait), 'awake' (no lock,
-- call again now) or 'busy' (no lock: writers hold it shared mid-transaction;
-- call again after a short pause).
--
-- The final drain is a statement of its own inside this VOLATILE function,
-- so under READ COMMITTED it takes its snapshot after the lock was taken and
-- sees every row of a writer that did not notify (that writer held the lock
-- shared until it committed). The function refuses other isolation levels,
-- where the snapshot would be the statement's and rows could be stranded.

CREATE OR REPLACE FUNCTION realtime_bridge.sequence_pass(max_changes integer, holding boolean)
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
        RAISE EXCEPTION 'realtime_bridge.sequence_pass() needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF holding THEN
        PERFORM pg_advisory_unlock(key);
    END IF;
    SELECT s.last_seq INTO before FROM realtime_bridge.sequencer s;
    RETURN QUERY SELECT * FROM realtime_bridge.sequence_rows(max_changes);
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
    RETURN QUERY SELECT * FROM realtime_bridge.sequence_rows(max_changes - numbered::integer);
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

-- One numbering pass (what OutboxSource.SEQUENCE_SQL does): visible
-- unnumbered rows in id order, up to about max_changes changes (at least one
-- row); a row of n changes gets n consecutive seqs; followers are notified
-- once per pass that numbered something.
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
    RETURNING s.last_seq - b.n AS base
), wake AS MATERIALIZED (
    SELECT pg_notify('realtime_bridge_seq', '') AS sent FROM counter
)
UPDATE realtime_bridge.outbox o
SET seq = counter.base + chosen.before + 1, sequenced_at = clock_timestamp()
FROM chosen, counter, wake
WHERE o.id = chosen.id
RETURNING coalesce(o.ref, o.id), o.seq, o.operation, o.schema_name, o.table_name, o.record,
          o.old_record, o.created_at, o.channel, o.event, o.changes, o.batch
$$;

-- Neither function is SECURITY DEFINER: a caller needs the sequencer's own
-- privileges (UPDATE on the outbox and the counter) for them to do anything.
