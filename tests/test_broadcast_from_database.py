"""Broadcast from Database: with hosted Supabase's realtime.send() present and the
setting on, every captured change and published event is also handed to it.

Our Postgres has a `realtime` schema (realtime.messages, for private channel
policies) but no realtime.send(), so each test that needs one creates a
stand-in whose send() records its calls in a table, with the same signature
as Supabase's.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from realtime_bridge.migrate import default_migrations_dir, discover

MIGRATION = "20261123000700_broadcast_from_database.sql"

STAND_IN = """
CREATE SCHEMA IF NOT EXISTS realtime;
CREATE TABLE realtime.sent (
    n       bigint GENERATED ALWAYS AS IDENTITY,
    payload jsonb,
    event   text,
    topic   text,
    private boolean
);
CREATE FUNCTION realtime.send(payload jsonb, event text, topic text, private boolean DEFAULT true)
RETURNS void LANGUAGE sql
AS $$
    INSERT INTO realtime.sent (payload, event, topic, private)
    VALUES (payload, event, topic, private)
$$;
"""


async def sent(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT payload, event, topic, private FROM realtime.sent ORDER BY n")
    return [{**dict(r), "payload": orjson.loads(r["payload"])} for r in rows]


async def set_value(db: asyncpg.Connection, key: str, value: str) -> None:
    await db.execute("UPDATE realtime_bridge.settings SET value = $2 WHERE key = $1", key, value)


async def outbox_trigger_args(db: asyncpg.Connection) -> list[bytes]:
    rows = await db.fetch(
        """
        SELECT tgargs FROM pg_trigger
        WHERE tgrelid = 'realtime_bridge.outbox'::regclass
          AND tgname = 'realtime_bridge_broadcast_from_database'
        """
    )
    return [bytes(r["tgargs"]) for r in rows]


async def test_the_setting_exists_and_is_off_with_no_trigger_on_the_outbox(
    db: asyncpg.Connection,
) -> None:
    settings = dict(await db.fetch("SELECT key, value FROM realtime_bridge.settings"))
    assert settings["broadcast_from_database"] == "off"
    assert settings["broadcast_from_database_private"] == "true"
    assert await outbox_trigger_args(db) == []
    await db.execute(STAND_IN)
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1','AAPL',1,1)"
    )
    assert await sent(db) == []


async def test_when_on_every_change_and_published_event_is_sent(db: asyncpg.Connection) -> None:
    await db.execute(STAND_IN)
    await set_value(db, "broadcast_from_database", "on")
    assert await outbox_trigger_args(db) == [b"true\x00"]

    position_id = await db.fetchval(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "VALUES ('u1', 'AAPL', 10, 190) RETURNING id"
    )
    await db.execute("UPDATE positions SET quantity = 12 WHERE id = $1", position_id)
    await db.execute("DELETE FROM positions WHERE id = $1", position_id)
    await db.execute(
        "SELECT realtime_bridge.broadcast('position-updates', 'position_update', $1::jsonb)",
        orjson.dumps({"id": 7, "user_id": "u2"}).decode(),
    )

    calls = await sent(db)
    assert [(c["topic"], c["event"], c["private"]) for c in calls] == [
        ("public.positions", "INSERT", True),
        ("public.positions", "UPDATE", True),
        ("public.positions", "DELETE", True),
        ("position-updates", "position_update", True),
    ]
    insert, update, delete, published = (c["payload"] for c in calls)
    assert set(insert) == {"schema", "table", "operation", "record", "old_record"}
    assert (insert["schema"], insert["table"], insert["operation"]) == (
        "public",
        "positions",
        "INSERT",
    )
    assert insert["record"]["id"] == position_id
    assert insert["record"]["symbol"] == "AAPL"
    assert insert["old_record"] is None
    assert (update["old_record"]["quantity"], update["record"]["quantity"]) == (10, 12)
    assert delete["record"] is None
    assert delete["old_record"]["id"] == position_id
    assert published == {"id": 7, "user_id": "u2"}


async def test_private_follows_its_setting_and_off_removes_the_trigger(
    db: asyncpg.Connection,
) -> None:
    await db.execute(STAND_IN)
    await set_value(db, "broadcast_from_database", "on")
    await set_value(db, "broadcast_from_database_private", "false")
    assert await outbox_trigger_args(db) == [b"false\x00"]
    await db.execute(
        "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price) "
        "VALUES ('u1', 'MSFT', 'BUY', 1, 400)"
    )
    await set_value(db, "broadcast_from_database", "off")
    assert await outbox_trigger_args(db) == []
    await db.execute(
        "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price) "
        "VALUES ('u1', 'NVDA', 'BUY', 1, 100)"
    )
    calls = await sent(db)
    assert [(c["topic"], c["private"], c["payload"]["record"]["symbol"]) for c in calls] == [
        ("public.trades", False, "MSFT")
    ]


async def test_without_a_realtime_schema_writes_still_work_and_it_is_used_once_present(
    db: asyncpg.Connection,
) -> None:
    # Plain Postgres (or Supabase with Realtime's schema missing): the setting
    # on must not break a single write.
    await set_value(db, "broadcast_from_database", "on")
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1','AAPL',1,1)"
    )
    outbox = await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox")
    assert outbox == 1
    # realtime.send appears later: the check is made at run time, not once.
    await db.execute(STAND_IN)
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1','TSLA',1,1)"
    )
    assert [c["payload"]["record"]["symbol"] for c in await sent(db)] == ["TSLA"]
    # ... and disappears again.
    await db.execute("DROP SCHEMA realtime CASCADE")
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1','AMD',1,1)"
    )
    assert await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox") == 3


async def test_reapplying_the_migration_keeps_the_current_setting(db: asyncpg.Connection) -> None:
    (migration,) = [m for m in discover(default_migrations_dir()) if m.path.name == MIGRATION]
    await set_value(db, "broadcast_from_database", "on")
    await db.execute(migration.sql)
    value = await db.fetchval(
        "SELECT value FROM realtime_bridge.settings WHERE key = 'broadcast_from_database'"
    )
    assert value == "on"
    assert await outbox_trigger_args(db) == [b"true\x00"]
    await set_value(db, "broadcast_from_database", "off")
    await db.execute(migration.sql)
    assert await outbox_trigger_args(db) == []


async def test_a_multi_row_statement_sends_one_message_per_row_in_order(
    db: asyncpg.Connection,
) -> None:
    await db.execute(STAND_IN)
    await set_value(db, "broadcast_from_database", "on")
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "SELECT 'u' || n, 'S' || n, n, 1 FROM generate_series(1, 5) AS n"
    )
    await db.execute("DELETE FROM positions WHERE quantity <= 2")
    calls = await sent(db)
    assert [(c["event"], c["topic"]) for c in calls] == [("INSERT", "public.positions")] * 5 + [
        ("DELETE", "public.positions")
    ] * 2
    assert [c["payload"]["record"]["symbol"] for c in calls[:5]] == ["S1", "S2", "S3", "S4", "S5"]
    assert all(c["payload"]["old_record"] is None for c in calls[:5])
    assert sorted(c["payload"]["old_record"]["symbol"] for c in calls[5:]) == ["S1", "S2"]
    assert all(c["payload"]["record"] is None for c in calls[5:])


async def test_an_outbox_row_holding_an_array_of_rows_is_split(db: asyncpg.Connection) -> None:
    # The shape a statement-level capture writes, whichever capture the
    # migrations install: `record` (INSERT) or `old_record` (DELETE) is an
    # array of rows.
    await db.execute(STAND_IN)
    await set_value(db, "broadcast_from_database", "on")
    rows = orjson.dumps([{"id": 1}, {"id": 2}, {"id": 3}]).decode()
    await db.execute(
        "INSERT INTO realtime_bridge.outbox (schema_name, table_name, operation, record) "
        "VALUES ('public', 't', 'INSERT', $1::jsonb)",
        rows,
    )
    await db.execute(
        "INSERT INTO realtime_bridge.outbox (schema_name, table_name, operation, old_record) "
        "VALUES ('public', 't', 'DELETE', $1::jsonb)",
        rows,
    )
    calls = await sent(db)
    assert [
        (c["event"], c["topic"], c["payload"]["record"], c["payload"]["old_record"]) for c in calls
    ] == [
        ("INSERT", "public.t", {"id": 1}, None),
        ("INSERT", "public.t", {"id": 2}, None),
        ("INSERT", "public.t", {"id": 3}, None),
        ("DELETE", "public.t", None, {"id": 1}),
        ("DELETE", "public.t", None, {"id": 2}),
        ("DELETE", "public.t", None, {"id": 3}),
    ]
