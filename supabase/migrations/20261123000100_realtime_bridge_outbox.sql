-- realtime-bridge: the outbox, the change log every bridge instance reads.
--
-- Each captured change (and each event published through the bridge's API)
-- is one row. Rows are inserted without a seq; the elected sequencer
-- (one bridge instance holding an advisory lock) numbers newly committed
-- rows in the order they become visible, so `seq` is gap-free and follows
-- commit order. Readers only ever read by seq.
--
-- Idempotent: safe to re-apply, on plain Postgres 15+ and on Supabase.

CREATE SCHEMA IF NOT EXISTS realtime_bridge;

CREATE TABLE IF NOT EXISTS realtime_bridge.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq          bigint UNIQUE,
    schema_name  text,
    table_name   text,
    operation    text NOT NULL
                 CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'BROADCAST')),
    record       jsonb,
    old_record   jsonb,
    channel      text,
    event        text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    sequenced_at timestamptz
);

COMMENT ON TABLE realtime_bridge.outbox IS
    'Captured row changes and published events, numbered by seq in commit order; also the audit log (kept for realtime_bridge.settings.retention).';

-- The sequencer finds unnumbered rows through this small partial index.
CREATE INDEX IF NOT EXISTS outbox_unsequenced_idx
    ON realtime_bridge.outbox (id) WHERE seq IS NULL;

-- Retention pruning walks rows by age.
CREATE INDEX IF NOT EXISTS outbox_created_at_idx
    ON realtime_bridge.outbox (created_at);

-- The sequencer's counter: one row, the last seq handed out.
CREATE TABLE IF NOT EXISTS realtime_bridge.sequencer (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq  bigint NOT NULL DEFAULT 0
);

INSERT INTO realtime_bridge.sequencer (singleton, last_seq)
VALUES (true, 0)
ON CONFLICT (singleton) DO NOTHING;

-- Key/value settings read by SQL functions (retention, ...).
CREATE TABLE IF NOT EXISTS realtime_bridge.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
