"""The official `@supabase/supabase-js` client, run by Node, against a running bridge.

`tests/js/scenario.mjs` is what an app written for hosted Supabase does (join,
postgres_changes with a filter, broadcast with ack, REST broadcast, presence,
token refresh, leave); this test serves its database and token requests over
stdio and checks what the client saw. `make test` installs the pinned client
(`tests/js/package-lock.json`).
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from realtime_bridge.testing import RunningBridge
from tests.conftest import ROOT, BridgeFactory
from tests.filter_compat import FILTER_CASES, FILTER_ROWS, FILTER_TABLE, filter_expectations

JS_DIR = ROOT / "tests" / "js"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@functools.cache
def node_command() -> list[str]:
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    # Node 22 has a global WebSocket; Node 20 has it behind a flag.
    return ["node", "--experimental-websocket"] if major < 22 else ["node"]


async def run_node(
    script: str, bridge: RunningBridge, db: asyncpg.Connection, *args: str, timeout: float = 45
) -> dict[str, Any]:
    """Run a tests/js script, answering its calls; return its result."""
    installed = JS_DIR / "node_modules" / "@supabase" / "supabase-js" / "package.json"
    assert installed.is_file(), (
        "@supabase/supabase-js is not installed: run `make pytest` "
        "(or `npm ci --prefix tests/js`) first"
    )
    process = await asyncio.create_subprocess_exec(
        *node_command(),
        str(JS_DIR / script),
        bridge.url,
        bridge.anon_key,
        bridge.service_key,
        *args,
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            while line := await process.stdout.readline():
                if not line.startswith(b"@@"):
                    continue
                message = orjson.loads(line[2:])
                if message["type"] == "result":
                    return dict(message)
                answer: dict[str, Any] = {"id": message["id"]}
                if message["op"] == "sql":
                    rows = await db.fetch(message["query"], *message["args"])
                    answer["rows"] = [dict(row) for row in rows]
                else:
                    answer["token"] = bridge.user_token(message["user"], ttl=message["ttl"])
                process.stdin.write(orjson.dumps(answer, default=str) + b"\n")
                await process.stdin.drain()
    finally:
        if process.returncode is None:
            process.kill()
        stderr = (await process.stderr.read()).decode() if process.stderr else ""
        await process.wait()
    raise AssertionError(f"{script} ended without a result:\n{stderr}")


@pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
async def test_supabase_js_works_unchanged(
    start_bridge: BridgeFactory, db: asyncpg.Connection, vsn: str
) -> None:
    bridge = await start_bridge()
    result = await run_node("scenario.mjs", bridge, db, vsn)
    symbol = "JS" + vsn.replace(".", "")

    assert result["subscribed"] == ["SUBSCRIBED"] * 3
    assert result["system"][0] == {
        "extension": "postgres_changes",
        "status": "ok",
        "message": "Subscribed to PostgreSQL",
        "channel": f"room-{vsn}-" + result["system"][0]["channel"].rsplit("-", 1)[1],
    }

    insert, update, delete, after_refresh = result["changes"]
    assert [c["eventType"] for c in result["changes"]] == ["INSERT", "UPDATE", "DELETE", "INSERT"]
    assert {(c["schema"], c["table"]) for c in result["changes"]} == {("public", "positions")}
    assert all(TIMESTAMP.match(c["commit_timestamp"]) for c in result["changes"])
    assert insert["new"]["symbol"] == symbol
    assert insert["new"]["user_id"] == "u1"
    assert insert["new"]["quantity"] == 2
    assert insert["old"] == {}
    assert update["new"]["current_price"] == 120
    assert update["old"]["current_price"] == 110
    assert delete["new"] == {}
    assert delete["old"]["id"] == insert["new"]["id"]
    assert after_refresh["new"]["quantity"] == 3
    assert result["changesAfterLeave"] == 4

    # Typed position updates as broadcasts, only the signed-in user's rows.
    positions = result["positions"]
    assert [p["event"] for p in positions] == ["position_update"] * 6
    assert {p["payload"]["user_id"] for p in positions} == {"u1"}
    assert positions[0]["payload"]["market_value"] == 220.0
    assert positions[0]["meta"]["operation"] == "INSERT"
    assert positions[1]["payload"]["market_value"] == 240.0
    assert [p["meta"]["operation"] for p in positions[2:4]] == ["INSERT", "DELETE"]
    assert positions[3]["payload"]["id"] == insert["new"]["id"]
    seqs = [int(p["meta"]["id"]) for p in positions]
    assert seqs == sorted(seqs)

    # Broadcast with ack, self for alice, not for the backend; REST messages carry an id.
    assert result["aliceSend"] == "ok"
    assert result["backendSend"] == "ok"
    assert [m["payload"]["from"] for m in result["aliceHeard"]] == ["alice", "backend", "rest"]
    assert [m["payload"]["from"] for m in result["backendHeard"]] == ["alice", "rest"]
    assert result["aliceHeard"][2]["meta"]["id"]

    assert result["track"] == "ok"
    assert result["untrack"] == "ok"
    assert result["aliceState"]["alice"][0]["online_at"] == "now"
    assert result["backendState"]["alice"][0]["presence_ref"]
    assert result["presence"] == [
        {"event": "join", "key": "alice", "online_at": "now"},
        {"event": "leave", "key": "alice"},
    ]
    assert result["leave"] == "ok"

    frames = result["frames"]
    if vsn == "2.0.0":
        # supabase-js sends every broadcast as a binary kind-3 push and reads kind-4 frames.
        assert set(frames["sentKinds"]) == {3}
        assert len(frames["sentKinds"]) == 2
        assert set(frames["receivedKinds"]) == {4}
        assert len(frames["receivedKinds"]) >= 6 + 4
    else:
        assert frames["sentKinds"] == []
        assert frames["receivedKinds"] == []
    assert frames["sentText"] > 0
    assert frames["receivedText"] > 0


# Supabase's documented policy for per-user private topics (auth.uid() is a uuid there).
USER_TOPIC_POLICIES = """
CREATE POLICY user_topic_read ON realtime.messages FOR SELECT TO authenticated
USING (realtime.topic() = 'user:' || auth.uid()::text);
CREATE POLICY user_topic_write ON realtime.messages FOR INSERT TO authenticated
WITH CHECK (realtime.topic() = 'user:' || auth.uid()::text);
"""


@pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
async def test_supabase_js_private_channels_rest_replay_and_expiry(
    start_bridge: BridgeFactory, db: asyncpg.Connection, vsn: str
) -> None:
    await db.execute(USER_TOPIC_POLICIES)
    bridge = await start_bridge()
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    result = await run_node("private.mjs", bridge, db, vsn, user_a, user_b, timeout=90)

    # SELECT policy: the own topic joins; another user's is refused and then closed, so
    # supabase-js does not rejoin it in a loop.
    assert result["ownStates"] == ["SUBSCRIBED"]
    assert result["otherStates"] == [
        "CHANNEL_ERROR: Unauthorized: You do not have permissions to read from this "
        f"Channel topic: user:{user_b}",
        "CLOSED",
    ]
    # INSERT policy: over the socket (ack) and over REST; both directions.
    assert result["send"] == "ok"
    assert result["httpSend"] == {"success": True}
    assert result["backendHeard"] == ["ws", "http"]
    # (REST messages reach every member, the sender's own socket included, as on Supabase.)
    assert result["heard"] == ["http", "backend"]
    # Another user's private topic over REST: accepted and skipped, as on Supabase.
    assert result["httpOther"] == {"success": True}
    # send() before joining falls back to REST: the anon key may send on a public topic.
    assert result["restFallback"] == "ok"
    # A new token whose user may not read the topic: the channel is closed.
    assert result["ownAfterRefresh"] == ["CLOSED"]

    # Replay from the log, scoped to the user: the latest `limit`, or all (no cap of 25).
    assert result["replayLimited"] == [["R28", True], ["R29", True]]
    assert result["replayAll"] == [f"R{i}" for i in range(30)]

    # Expiry: Supabase's system message and a close, no rejoin with the expired token;
    # a fresh join on the same socket gets what was missed meanwhile.
    assert len(result["expirySystem"]) == 1
    assert result["expirySystem"][0].startswith("Token has expired")
    assert result["carolStates"] == ["SUBSCRIBED", "CLOSED"]
    assert result["changes"] == ["MISSED0", "MISSED1", "MISSED2", "LIVE"]


async def test_supabase_auth_stays_hosted_and_only_realtime_points_at_the_bridge(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    # docs/clients.md: supabase.realtime replaced by a RealtimeClient for the bridge.
    bridge = await start_bridge()
    result = await run_node("split.mjs", bridge, db)
    assert result["states"] == ["SUBSCRIBED"]
    assert result["updates"] == ["SPLIT"]
    assert result["endpoint"].startswith(f"ws://127.0.0.1:{bridge.port}/realtime/v1/websocket")


@pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
async def test_supabase_js_filter_operators_receive_what_postgres_selects(
    start_bridge: BridgeFactory, db: asyncpg.Connection, vsn: str
) -> None:
    await db.execute(FILTER_TABLE)
    bridge = await start_bridge()
    rows = [dict(zip(("name", "note", "qty", "flag"), row, strict=True)) for row in FILTER_ROWS]
    result = await run_node(
        "filters.mjs", bridge, db, vsn, orjson.dumps(list(FILTER_CASES)).decode(),
        orjson.dumps(rows).decode(),
    )  # fmt: skip
    assert result["status"] == "SUBSCRIBED"
    assert result["system"] == ["ok"]  # no "Error parsing `filter` params"
    expected = await filter_expectations(db)
    assert all(expected.values()), expected  # every case selects something…
    assert any(len(ids) < len(FILTER_ROWS) for ids in expected.values())  # …and not all
    assert result["received"] == expected
    # One transaction, one commit_timestamp, in Supabase's format.
    stamps = {change["commit_timestamp"] for change in result["all"]}
    assert len(result["all"]) == len(FILTER_ROWS)
    assert len(stamps) == 1
    assert TIMESTAMP.match(stamps.pop())
