-- realtime-bridge: the outbox, the change log every bridge instance reads.
--
-- Each row holds `changes` captured changes: one for a row-level capture
-- (UPDATE) or a published event, up to 1000 for a statement-level capture
-- (a multi-row INSERT or DELETE writes one row per chunk of 1000, with
-- `record` / `old_record` holding JSON arrays; `batch` says which). Rows are
-- inserted without a seq; the elected sequencer (one bridge instance
-- holding an advisory lock) numbers newly committed rows in the order they
-- become visible: a row gets seqs seq .. seq + changes - 1, so seqs are
-- gap-free and follow commit order. Readers only ever read by seq.
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
    changes      integer NOT NULL DEFAULT 1 CHECK (changes BETWEEN 1 AND 1000),
    batch        boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    sequenced_at timestamptz
);

COMMENT ON TABLE realtime_bridge.outbox IS
    'Captured row changes and published events, numbered by seq in commit order; also the audit log (kept for realtime_bridge.settings.retention).';

-- The sequencer finds unnumbered rows through this small partial index.
CREATE INDEX IF NOT EXISTS outbox_unsequenced_idx
    ON realtime_bridge.outbox (id) WHERE seq IS NULL;

-- (No index on created_at: every index is paid by every captured change.
-- Retention pruning walks the primary key from the oldest id instead.)

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
