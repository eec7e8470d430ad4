"""Rooms: `challenge_{id}` channels joinable only where the plugin's SQL predicate admits.

The predicate (plugins/challenges.py) runs in Postgres as the caller, on our
JSON WebSocket, SSE and the Supabase (Phoenix) protocol; refused joins get
a clear error and the connection stays usable.
"""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from realtime_bridge import Room
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.test_supabase_protocol import phx

TRADE = "INSERT INTO challenge_trades (challenge_id, user_id, symbol, pnl) VALUES ($1, $2, $3, 5)"
CHALLENGE = "INSERT INTO challenges (id, user_id) VALUES ($1, $2) RETURNING id"


async def refusal(bridge: RunningBridge, token: str, channel: str) -> dict[str, object]:
    async with bridge.websocket(token) as ws:
        frame = await ws.subscribe(channel=channel, client_id="c1")
        # The connection stays usable after a refusal.
        await ws.send({"type": "ping"})
        assert (await ws.recv())["type"] == "pong"
    assert frame["type"] == "error", frame
    return frame


async def test_only_the_owner_joins_and_reads_a_challenge_room(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(CHALLENGE, 1, "alice")
    await db.execute(CHALLENGE, 2, "bob")
    alice, bob = bridge.user_token("alice"), bridge.user_token("bob")
    async with bridge.websocket(alice) as mine, bridge.websocket(bob) as theirs:
        reply = await mine.subscribe(channel="challenge_1")
        assert (reply["type"], reply["channel"]) == ("subscribed", "challenge_1")
        assert (await theirs.subscribe(channel="challenge_2"))["type"] == "subscribed"
        # Bob may not read Alice's room.
        denied = await theirs.subscribe(channel="challenge_1", client_id="x")
        assert denied["code"] == "unauthorized"
        assert denied["client_id"] == "x"
        assert "ownership check of challenge_{challenge_id}" in denied["message"]
        await db.execute(TRADE, 1, "alice", "EURUSD")
        await db.execute(TRADE, 2, "bob", "GBPUSD")
        (got,) = await mine.changes(1)
        assert (got["channel"], got["event"]) == ("challenge_1", "EQUITY_UPDATED")
        assert got["data"]["trade_symbol"] == "EURUSD"
        (other,) = await theirs.changes(1)
        assert other["data"]["trade_symbol"] == "GBPUSD"
        assert await mine.silent(0.3)
        assert await theirs.silent(0.1)


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("challenge_0001", "unknown_channel"),  # not the canonical id of challenge 1
        ("challenge_01", "unknown_channel"),
        ("challenge_", "unknown_channel"),
        ("challenge_abc", "unknown_channel"),
        ("challenge_1 OR true", "unknown_channel"),
        ("challenge_1'; DROP TABLE challenges; --", "unknown_channel"),
        ("challenge_1\x00", "unknown_channel"),
        ("challenge_" + "9" * 19, "unauthorized"),  # well formed, past bigint: nobody's
        ("challenge_3", "unauthorized"),  # no such challenge
    ],
)
async def test_hostile_room_ids_are_refused_with_a_clear_error(
    start_bridge: BridgeFactory, db: asyncpg.Connection, channel: str, code: str
) -> None:
    bridge = await start_bridge()
    await db.execute(CHALLENGE, 1, "alice")
    frame = await refusal(bridge, bridge.user_token("alice"), channel)
    assert frame["code"] == code
    assert repr(channel) in str(frame["message"])
    if code == "unknown_channel":
        assert "ids must match" in str(frame["message"])
    assert await db.fetchval("SELECT count(*) FROM challenges") == 1


async def test_tokens_anon_and_the_service_key(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(CHALLENGE, 1, "alice")
    expired = bridge.user_token("alice", ttl=-10)
    # A "0001" user is not user "1"... nor "alice" (ids and subs are exact strings).
    assert (await refusal(bridge, bridge.user_token("Alice"), "challenge_1"))["code"] == (
        "unauthorized"
    )
    assert (await refusal(bridge, bridge.anon_key, "challenge_1"))["code"] == "unauthorized"
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{bridge.url}/sse/challenge_1", params={"apikey": expired}, timeout=5
        )
        assert response.status_code == 401
        assert response.json()["code"] == "token_expired"
        response = await client.get(
            f"{bridge.url}/sse/challenge_1",
            params={"apikey": bridge.user_token("bob")},
            timeout=5,
        )
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        # A room is events, not rows: no snapshot, said so (after the ownership check).
        response = await client.get(
            f"{bridge.url}/api/channels/challenge_1/snapshot",
            params={"apikey": bridge.user_token("alice")},
            timeout=5,
        )
        assert response.status_code == 400
        assert "is a room" in response.json()["message"]
    # The service key reads every room, without a query.
    async with bridge.websocket() as ops:
        assert (await ops.subscribe(channel="challenge_1"))["type"] == "subscribed"
        await db.execute(TRADE, 1, "alice", "EURUSD")
        (got,) = await ops.changes(1)
        assert got["event"] == "EQUITY_UPDATED"


async def test_supabase_clients_join_rooms_on_the_same_check(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(CHALLENGE, 1, "alice")
    async with phx(bridge, key=bridge.anon_key) as alice, phx(bridge, key=bridge.anon_key) as bob:
        joined = await alice.join("realtime:challenge_1", token=bridge.user_token("alice"))
        assert joined.payload["status"] == "ok"
        # Private or not, a room is its ownership check (not realtime.messages policies).
        denied = await bob.join(
            "realtime:challenge_1", {"private": True}, token=bridge.user_token("bob")
        )
        assert denied.payload["status"] == "error"
        assert denied.payload["response"]["reason"].startswith(
            "Unauthorized: You do not have permissions to read from this Channel topic: challenge_1"
        )
        assert (await bob.next("phx_close")).topic == "realtime:challenge_1"
        odd = await bob.join("realtime:challenge_0001", token=bridge.user_token("bob"))
        assert odd.payload["status"] == "error"
        await db.execute(TRADE, 1, "alice", "EURUSD")
        message = await alice.next("broadcast")
        assert message.payload["event"] == "EQUITY_UPDATED"
        assert message.payload["payload"]["current_equity"] == "10005.00"
        assert await bob.silent(0.3)
        # A token of another user on the joined room: checked again, and the room is closed.
        await alice.push(
            "realtime:challenge_1", "access_token", {"access_token": bridge.user_token("bob")}
        )
        assert (await alice.next("phx_close")).topic == "realtime:challenge_1"
        await db.execute(TRADE, 1, "alice", "EURUSD")
        assert await alice.silent(0.4)


async def test_room_declarations_are_checked_when_plugins_load() -> None:
    with pytest.raises(ConfigurationError, match=r"must use \$challenge_id"):
        Room(prefix="challenge_", param="challenge_id", predicate="true")
    with pytest.raises(ConfigurationError, match="lower-case SQL identifier"):
        Room(prefix="c_", param="Id; --", predicate="$Id; --")
    room = Room(prefix="c_", param="cid", predicate="$cid = '1' OR $cid_x = 'y'")
    # Only the whole placeholder is replaced: $cid_x is not $cid.
    assert room.sql == "SELECT coalesce((($1::text) = '1' OR $cid_x = 'y'), false)"
    with pytest.raises(ConfigurationError, match="overlapping prefixes"):
        PluginRegistry([room, Room(prefix="c_x", param="cid", predicate="$cid")])


async def test_the_service_key_publishes_declared_room_events_only(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(CHALLENGE, 1, "alice")
    alert = {
        "challenge_id": "1",
        "user_id": "alice",
        "alert_type": "HIGH_DAILY_DRAWDOWN",
        "severity": "MEDIUM",
        "title": "High Daily Drawdown Warning",
        "message": "Daily drawdown at 4.20% (limit: 5.00%)",
        "current_equity": "9580.00",
        "daily_start_equity": "10000.00",
        "drawdown_percentage": "4.20",
        "threshold_percentage": "5.00",
        "alert_timestamp": "2026-12-02T12:00:00Z",
    }
    async with (
        bridge.websocket(bridge.user_token("alice")) as alice,
        httpx.AsyncClient(base_url=bridge.url, headers=bridge.service_headers) as http,
    ):
        await alice.subscribe(channel="challenge_1")

        async def post(channel: str, event: str, payload: object) -> httpx.Response:
            body = {"channel": channel, "event": event, "payload": payload}
            return await http.post("/api/broadcast", json=body)

        published = await post("challenge_1", "RISK_ALERT", alert)
        assert published.status_code == 202, published.text
        (got,) = await alice.changes(1)
        assert (got["event"], got["data"]["message"]) == ("RISK_ALERT", alert["message"])
        assert got["seq"] == published.json()["seq"]
        undeclared = await post("challenge_1", "SOMETHING_ELSE", alert)
        assert undeclared.status_code == 422
        assert (
            "must be one of CHALLENGE_STATUS_CHANGED, EQUITY_UPDATED, RISK_ALERT"
            in (undeclared.json()["message"])
        )
        wrong = await post("challenge_1", "RISK_ALERT", {**alert, "severity": "LOW"})
        assert wrong.status_code == 422
        assert wrong.json()["errors"][0]["loc"] == ["severity"]
        assert (await post("challenge_0001", "RISK_ALERT", alert)).status_code == 404
        as_user = await http.post(
            "/api/broadcast",
            json={"channel": "challenge_1", "event": "RISK_ALERT", "payload": alert},
            headers={"Authorization": f"Bearer {bridge.user_token('alice')}"},
        )
        assert as_user.status_code == 403
        assert await alice.silent(0.3)
