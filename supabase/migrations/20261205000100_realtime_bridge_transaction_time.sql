-- realtime-bridge: every row one transaction captures carries one time.
--
-- An event's timestamp (Supabase's `commit_timestamp`) comes from the
-- outbox's created_at on the trigger path. clock_timestamp() gave each
-- statement of a transaction its own time, so the rows of one transaction
-- disagreed; Supabase gives them all their commit time. A trigger cannot see
-- the commit time, so the trigger path uses the transaction's time, now(),
-- which every row of the transaction shares. (The WAL path uses the commit
-- time the WAL records.) Idempotent.

ALTER TABLE realtime_bridge.outbox ALTER COLUMN created_at SET DEFAULT now();
