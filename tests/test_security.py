"""The attack matrix: every identity against every way in. Zero rows may leak.

Identities: no key, the anon key, a forged token, `alg: none`, an expired
token, another user, the owner, the service key. Ways in: subscribe (with
filter tricks), replay with `since`, SSE, long-poll, DELETE and
owner-changing UPDATE, the generic table channel, the broadcast API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.helpers import until

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
    "VALUES ($1, $2, 1, 1) RETURNING id"
)


def forged(bridge: RunningBridge) -> str:
    return jwt.encode(
        {"role": "service_role", "exp": int(time.time()) + 60},
        "not-the-secret-but-long-enough-to-look-real-0123456789-0123456789",
        algorithm="HS256",
    )


def alg_none(bridge: RunningBridge) -> str:
    return jwt.encode(
        {"role": "service_role", "exp": int(time.time()) + 60},
        None,  # type: ignore[arg-type]
        algorithm="none",
    )


def expired(bridge: RunningBridge) -> str:
    return bridge.user_token("u1", ttl=-10)


BAD_KEYS = {"no key": None, "forged": forged, "alg none": alg_none, "expired": expired}


async def seed(db: asyncpg.Connection) -> dict[str, int]:
    return {
        "u1": await db.fetchval(INSERT, "u1", "MINE"),
        "u2": await db.fetchval(INSERT, "u2", "THEIRS"),
    }


@pytest.mark.parametrize("identity", list(BAD_KEYS))
async def test_bad_keys_cannot_open_any_door(start_bridge: BridgeFactory, identity: str) -> None:
    bridge = await start_bridge(enable_testing_api=True)
    make = BAD_KEYS[identity]
    key = make(bridge) if callable(make) else None
    with pytest.raises(InvalidStatus) as refused:
        async with bridge.websocket(key=key):
            pass
    assert refused.value.response.status_code == 401
    body = orjson.loads(refused.value.response.body or b"{}")
    assert body["code"] == ("token_expired" if identity == "expired" else "unauthorized")

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=bridge.url, headers=headers) as http:
        for method, path in [
            ("GET", "/sse/position-updates"),
            ("GET", "/api/channels/position-updates/events?wait=0"),
            ("GET", "/api/stats"),
            ("GET", "/metrics"),
            ("POST", "/api/broadcast"),
            ("POST", "/api/testing/simulate-signal"),
        ]:
            response = await http.request(method, path, json={})
            assert response.status_code == 401, (identity, path)
            assert response.json()["code"] in ("unauthorized", "token_expired")
        health = await http.get("/health")
        assert health.status_code == 200
        assert "last_error" not in health.json()["source_status"]


async def test_anon_sees_only_public_channels(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await seed(db)
    async with bridge.websocket(key=bridge.anon_key) as ws:
        for target in (
            {"channel": "position-updates"},
            {"table": "public.positions"},
            {"channel": "trade-updates", "since": 0},
        ):
            error = await ws.subscribe(**target)
            assert error["type"] == "error"
            assert error["code"] == "unauthorized"
        assert await ws.silent(0.3)
    async with httpx.AsyncClient(base_url=bridge.url, params={"apikey": bridge.anon_key}) as http:
        poll = await http.get("/api/channels/position-updates/events", params={"since": 0})
        assert poll.status_code == 401
        assert (await http.get("/sse/public.positions")).status_code == 401
        broadcast = await http.post(
            "/api/broadcast", json={"channel": "position-updates", "payload": {}}
        )
        assert broadcast.status_code == 403
        assert broadcast.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    "trick",
    [
        None,
        {"user_id": "u1"},
        "user_id=neq.u2",
        "user_id=in.(u2,u1)",
        "user_id=is.null",
        {"user_id": ["u1", "u2", "u3"]},
    ],
)
async def test_a_user_sees_only_their_rows_whatever_the_filter(
    start_bridge: BridgeFactory, db: asyncpg.Connection, trick: Any
) -> None:
    bridge = await start_bridge()
    await seed(db)  # history for since=0
    async with bridge.websocket(key=bridge.user_token("u2")) as ws:
        key = "filters" if isinstance(trick, dict) else "filter"
        for target in ({"channel": "position-updates"}, {"table": "public.positions"}):
            await ws.send(
                {"type": "subscribe", **target, "since": 0, **({key: trick} if trick else {})}
            )
        await db.execute(INSERT, "u1", "MINE-LIVE")
        await db.execute(INSERT, "u2", "THEIRS-LIVE")
        frames: list[dict[str, Any]] = []
        while True:
            try:
                frames.append(await ws.recv(0.5))
            except TimeoutError:
                break
    assert [f["type"] for f in frames].count("subscribed") == 2, frames
    changes = [f for f in frames if f["type"] == "db_change"]
    assert len(changes) + 2 == len(frames)
    assert {f["data"]["user_id"] for f in changes} <= {"u2"}
    assert {f["user_id"] for f in changes} <= {"u2"}
    if trick is None:
        # Both channels, history and live: u2's two rows each.
        assert len(changes) == 4


async def test_sse_and_poll_apply_the_same_scope(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await seed(db)
    assert await bridge.bridge.hub.wait_for_head(2, timeout=10)
    params = {"apikey": bridge.user_token("u2"), "since": "0", "filter": "user_id=eq.u1"}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        poll = await http.get(
            "/api/channels/position-updates/events", params={**params, "wait": "0"}
        )
        assert poll.json()["events"] == []
        wide = {**params, "filter": "", "wait": "0"}
        poll = await http.get("/api/channels/public.positions/events", params=wide)
        assert [e["user_id"] for e in poll.json()["events"]] == ["u2"]
        async with http.stream("GET", "/sse/position-updates", params=wide) as stream:
            seen: list[dict[str, Any]] = []
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    seen.append(orjson.loads(line[6:]))
                    break
        assert [e["user_id"] for e in seen] == ["u2"]


async def test_owner_change_and_delete_reach_exactly_the_right_people(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with (
        bridge.websocket(key=bridge.user_token("u1")) as alice,
        bridge.websocket(key=bridge.user_token("u2")) as bob,
        bridge.websocket(key=bridge.user_token("u3")) as eve,
    ):
        for ws in (alice, bob, eve):
            await ws.subscribe(channel="position-updates")
        row = await db.fetchval(INSERT, "u1", "SECRET")
        (created,) = await alice.changes(1)
        assert created["operation"] == "INSERT"

        await db.execute("UPDATE positions SET user_id = 'u2', symbol = 'MOVED' WHERE id = $1", row)
        (left,) = await alice.changes(1)
        (arrived,) = await bob.changes(1)
        # Alice learns the row left, without seeing its new state.
        assert left["operation"] == "DELETE"
        assert left["data"] is None
        assert left["old"]["symbol"] == "SECRET"
        # Bob gets it as new, without Alice's old version of it.
        assert arrived["operation"] == "INSERT"
        assert arrived["old"] is None
        assert arrived["data"]["symbol"] == "MOVED"
        assert arrived["seq"] == left["seq"]

        await db.execute("DELETE FROM positions WHERE id = $1", row)
        (deleted,) = await bob.changes(1)
        assert deleted["operation"] == "DELETE"
        assert deleted["old"]["user_id"] == "u2"
        assert await alice.silent(0.3)
        assert await eve.silent(0.1)


async def test_a_table_without_a_plugin_is_service_only_unless_configured(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute("CREATE TABLE public.audit (id int PRIMARY KEY, user_id text, note text)")
    await db.execute("SELECT realtime_bridge.track('public.audit')")
    bridge = await start_bridge()
    async with bridge.websocket(key=bridge.user_token("u1")) as user, bridge.websocket() as service:
        assert (await user.subscribe(table="public.audit"))["code"] == "unauthorized"
        assert (await service.subscribe(table="public.audit"))["type"] == "subscribed"
        await db.execute("INSERT INTO audit VALUES (1, 'u1', 'x')")
        assert len(await service.changes(1)) == 1
        assert await user.silent(0.3)

    opened = await start_bridge(table_access={"public.audit": "owner"})
    async with opened.websocket(key=opened.user_token("u1")) as user:
        assert (await user.subscribe(table="public.audit"))["type"] == "subscribed"
        await db.execute("INSERT INTO audit VALUES (2, 'u2', 'theirs'), (3, 'u1', 'mine')")
        (event,) = await user.changes(1)
        assert event["data"]["note"] == "mine"
        assert await user.silent(0.3)


async def test_an_expired_token_pauses_and_a_fresh_one_resumes_without_loss(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket(key=bridge.anon_key) as ws:
        reply = await ws.subscribe(channel="position-updates", token=bridge.user_token("u1", ttl=1))
        assert reply["type"] == "subscribed"
        await db.execute(INSERT, "u1", "BEFORE")
        assert (await ws.changes(1))[0]["data"]["symbol"] == "BEFORE"
        expired = await ws.recv(5)
        assert expired["code"] == "token_expired"
        for i in range(3):
            await db.execute(INSERT, "u1", f"WHILE{i}")
        await db.execute(INSERT, "u2", "NOT-MINE")
        assert await ws.silent(0.5)
        # New subscriptions are refused while expired.
        refused = await ws.subscribe(channel="trade-updates")
        assert refused["code"] == "token_expired"

        await ws.send({"type": "access_token", "token": bridge.user_token("u1", ttl=60)})
        ack = await ws.recv()
        assert ack["type"] == "access_token"
        assert ack["status"] == "ok"
        missed = await ws.changes(3)
        assert [e["data"]["symbol"] for e in missed] == ["WHILE0", "WHILE1", "WHILE2"]
        assert await ws.silent(0.3)


async def test_switching_to_another_users_token_ends_row_scoped_subscriptions(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket(key=bridge.user_token("u1")) as ws:
        reply = await ws.subscribe(channel="position-updates")
        await ws.send({"type": "access_token", "token": bridge.user_token("u2")})
        ended = await ws.recv()
        assert ended["code"] == "unauthorized"
        assert ended["subscription_id"] == reply["subscription_id"]
        assert (await ws.recv())["status"] == "ok"
        await db.execute(INSERT, "u1", "MINE")
        assert await ws.silent(0.4)


async def test_limits_answer_with_their_codes(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(
        max_subscriptions_per_connection=2,
        max_messages_per_second=5,
        max_connections_per_ip=2,
        allowed_origins=["https://app.example"],
    )
    async with bridge.websocket() as first, bridge.websocket():
        assert (await first.subscribe(channel="position-updates"))["type"] == "subscribed"
        assert (await first.subscribe(channel="trade-updates"))["type"] == "subscribed"
        await asyncio.sleep(1)  # refill the message bucket
        assert (await first.subscribe(channel="portfolio-updates"))[
            "code"
        ] == "too_many_subscriptions"

        with pytest.raises(InvalidStatus) as refused:
            async with bridge.websocket():
                pass
        assert refused.value.response.status_code == 429

        await asyncio.sleep(1)
        for _ in range(12):
            await first.send({"type": "ping"})
        answers = [await first.recv() for _ in range(12)]
        codes = [a.get("code") for a in answers if a["type"] == "error"]
        assert codes
        assert set(codes) == {"rate_limited"}
        assert sum(a["type"] == "pong" for a in answers) >= 5
        await asyncio.sleep(1.1)
        await first.send({"type": "ping"})
        assert await first.recv() == {"type": "pong"}

    with pytest.raises(InvalidStatus) as refused:
        async with bridge.websocket(additional_headers={"Origin": "https://evil.example"}):
            pass
    assert refused.value.response.status_code == 403
    async with bridge.websocket(additional_headers={"Origin": "https://app.example"}) as ok:
        await ok.send({"type": "ping"})
        assert await ok.recv() == {"type": "pong"}
    stats = bridge.bridge.stats()["errors_sent"]
    assert stats["rate_limited"] >= 1
    assert stats["too_many_connections"] == 1
    assert stats["origin_not_allowed"] == 1


async def test_cors_allows_only_configured_origins(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(allowed_origins=["https://app.example"])
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        ok = await http.get("/health", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = await http.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_testing_api_refuses_a_public_bind_without_consent() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", "serve", "--host", "0.0.0.0", "--port", "1"],
        env={"ENABLE_TESTING_API": "true", "PATH": "/usr/bin:/bin"},
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "ALLOW_TESTING_API_PUBLIC" in result.stderr


async def test_connection_limits_hold_for_sse_long_poll_and_snapshots(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge(max_connections_per_user=1, max_connections_per_ip=2)
    user = {"Authorization": f"Bearer {bridge.user_token('u1')}"}
    other = {"Authorization": f"Bearer {bridge.user_token('u2')}"}
    snapshot = "/api/channels/position-updates/snapshot"
    poll = "/api/channels/position-updates/events"
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        async with http.stream("GET", "/sse/position-updates", headers=user) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()  # kept: dropping it would close the stream
            assert (await anext(lines)).startswith(": subscribed")
            # u1 holds its one connection: every other transport is refused for u1 ...
            for response in (
                await http.get(snapshot, headers=user),
                await http.get(poll, headers=user, params={"wait": "0"}),
            ):
                assert response.status_code == 429
                assert response.json()["code"] == "too_many_connections"
                assert "per user" in response.json()["message"]
            with pytest.raises(InvalidStatus) as refused:
                async with bridge.websocket(key=bridge.user_token("u1")):
                    pass
            assert refused.value.response.status_code == 429
            # ... while u2 still gets its own.
            assert (await http.get(snapshot, headers=other)).status_code == 200
            # A long-poll in flight counts too: with it, the address is at its two.
            waiting = asyncio.create_task(http.get(poll, headers=other, params={"wait": "2"}))
            await until(
                lambda: bridge.bridge.limits.by_ip.get("127.0.0.1", 0) >= 2,
                what="the long-poll to be counted",
            )
            third = await http.get(snapshot, headers={"apikey": bridge.service_key})
            assert third.status_code == 429
            assert "per client address" in third.json()["message"]
            assert (await waiting).status_code == 200
        # Closed, the stream gives its place back (once the server sees it go).
        for _ in range(100):
            if not bridge.bridge.limits.by_user:
                break
            await asyncio.sleep(0.02)
        assert bridge.bridge.limits.by_user == {}
        assert bridge.bridge.limits.by_ip == {}
        assert (await http.get(snapshot, headers=user)).status_code == 200
