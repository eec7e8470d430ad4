"""Private channels: realtime.messages RLS policies, evaluated in Postgres as Supabase does.

Over the wire with a bare Phoenix client (tests/test_supabase_protocol.py's),
and through the REST broadcast API. The official clients do the same in
test_supabase_js.py and test_supabase_python_client.py.
"""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.conftest import BridgeFactory
from tests.test_supabase_protocol import Phx, phx

# One topic per user: user:<sub>, read and write. Compared as text, so "0001" is not "1".
# An `admin` claim reads every user: topic (to show a new token changing the answer).
OWN_TOPIC_POLICIES = """
CREATE POLICY own_topic_read ON realtime.messages FOR SELECT TO authenticated
USING (
    realtime.topic() = 'user:' || (auth.jwt() ->> 'sub')
    OR (realtime.topic() LIKE 'user:%' AND (auth.jwt() ->> 'admin') = 'true')
    OR (realtime.topic() = 'feed' AND extension = 'broadcast')
);
CREATE POLICY own_topic_write ON realtime.messages FOR INSERT TO authenticated
WITH CHECK (realtime.topic() = 'user:' || (auth.jwt() ->> 'sub'));
"""

DENIED = "Unauthorized: You do not have permissions to read from this Channel topic: "
PRIVATE = {"private": True, "broadcast": {"ack": True, "self": False}}


async def refused(client: Phx, topic: str, token: str | None = None) -> str:
    """Join `topic` expecting a refusal followed by phx_close; the reason."""
    reply = await client.join(topic, PRIVATE, token)
    assert reply.payload["status"] == "error", reply
    closed = await client.next("phx_close")
    assert closed.topic == topic
    assert closed.ref == client.joins[topic]
    reason: str = reply.payload["response"]["reason"]
    return reason


async def test_private_topics_follow_the_realtime_messages_policies(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(OWN_TOPIC_POLICIES)
    bridge = await start_bridge()
    one, zero = bridge.user_token("1"), bridge.user_token("0001")
    async with (
        phx(bridge, key=bridge.anon_key, vsn="2.0.0") as alice,
        phx(bridge, key=bridge.anon_key) as bob,
        phx(bridge, key=bridge.anon_key) as anon,
        phx(bridge) as service,
    ):
        # SELECT policy: each user joins their own topic only ("0001" is not "1").
        assert (await alice.join("realtime:user:1", PRIVATE, one)).payload["status"] == "ok"
        assert await refused(alice, "realtime:user:0001", one) == DENIED + "user:0001"
        assert (await bob.join("realtime:user:0001", PRIVATE, zero)).payload["status"] == "ok"
        assert await refused(bob, "realtime:user:1", zero) == DENIED + "user:1"
        assert await refused(anon, "realtime:user:1") == DENIED + "user:1"
        # The service key bypasses RLS, as service_role does on Supabase.
        assert (await service.join("realtime:user:1", PRIVATE)).payload["status"] == "ok"
        # A public topic of the same name is another room, open to everyone.
        assert (await anon.join("realtime:user:1")).payload["status"] == "ok"

        # Receive (SELECT) and send (INSERT) on the own topic.
        await service.push(
            "realtime:user:1", "broadcast", {"type": "broadcast", "event": "n", "payload": {"a": 1}}
        )
        assert (await alice.next("broadcast")).payload["payload"] == {"a": 1}
        await alice.push_binary("realtime:user:1", "n", b'{"from":"alice"}')
        assert (await alice.next("phx_reply")).payload["status"] == "ok"
        assert (await service.next("broadcast")).payload["payload"] == {"from": "alice"}
        assert await anon.silent(0.2)  # the public room heard nothing
        await alice.push("realtime:user:1", "presence", {"event": "track", "payload": {"x": 1}})
        assert (await alice.next("phx_reply")).payload["status"] == "ok"

        # 'feed': everyone may read broadcasts, nobody may write or track (INSERT refused).
        for client, token in ((alice, one), (bob, zero)):
            assert (await client.join("realtime:feed", PRIVATE, token)).payload["status"] == "ok"
        await alice.push_binary("realtime:feed", "n", b"{}")
        denied = await alice.next("phx_reply")
        assert denied.payload["status"] == "error"
        assert denied.payload["response"]["reason"] == (
            "Unauthorized: You do not have permissions to write to this Channel topic: feed"
        )
        await alice.push("realtime:feed", "presence", {"event": "track", "payload": {"x": 1}})
        assert (await alice.next("phx_reply")).payload["status"] == "error"
        assert await bob.silent(0.2)

        # A new token is a new caller: another user's token on user:1 loses the topic.
        await alice.push("realtime:user:1", "access_token", {"access_token": zero})
        system = await alice.next("system")
        assert system.payload == {
            "extension": "system",
            "status": "error",
            "message": "You no longer have permission to read from this Channel topic: user:1",
            "channel": "user:1",
        }
        assert (await alice.next("phx_close")).topic == "realtime:user:1"
        await service.push(
            "realtime:user:1", "broadcast", {"type": "broadcast", "event": "n", "payload": {}}
        )
        # Same user, other claims: the answer is asked again too.
        admin = bridge.user_token("1", admin="true")
        assert (await alice.join("realtime:user:0001", PRIVATE, admin)).payload["status"] == "ok"
        await alice.push("realtime:user:0001", "access_token", {"access_token": one})
        assert (
            (await alice.next("system"))
            .payload["message"]
            .startswith("You no longer have permission")
        )
        assert (await alice.next("phx_close")).topic == "realtime:user:0001"
    assert bridge.bridge.stats()["errors_sent"]["unauthorized"] >= 4


async def test_without_realtime_messages_private_topics_admit_only_the_service_key(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute("DROP TABLE realtime.messages")
    bridge = await start_bridge()
    async with phx(bridge, key=bridge.anon_key) as user, phx(bridge) as service:
        reason = await refused(user, "realtime:user:1", bridge.user_token("1"))
        assert reason == DENIED + "user:1"
        assert (await service.join("realtime:user:1", PRIVATE)).payload["status"] == "ok"


async def test_rest_broadcast_takes_keys_and_user_tokens_like_supabase(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(OWN_TOPIC_POLICIES)
    bridge = await start_bridge()
    api = f"{bridge.url}/realtime/v1/api/broadcast"
    one = bridge.user_token("1")

    def batch(topic: str, private: bool, payload: object = None) -> dict[str, object]:
        message = {"topic": topic, "event": "n", "payload": payload or {"t": topic}}
        return {"messages": [{**message, "private": private}]}

    async with (
        phx(bridge, key=bridge.anon_key) as public,
        phx(bridge) as private,
        httpx.AsyncClient() as http,
    ):
        await public.join("realtime:news")
        await private.join("realtime:user:1", PRIVATE)
        await private.join("realtime:user:0001", PRIVATE)
        # The anon key on a public topic (what supabase-js send() falls back to).
        anon = {"apikey": bridge.anon_key}
        assert (await http.post(api, json=batch("news", False), headers=anon)).status_code == 202
        assert (await public.next("broadcast")).payload["payload"] == {"t": "news"}
        # A user token (Bearer before apikey) on the private topic its INSERT policy allows...
        user = {"apikey": bridge.anon_key, "Authorization": f"Bearer {one}"}
        response = await http.post(api, json=batch("user:1", True), headers=user)
        assert response.status_code == 202
        assert (await private.next("broadcast")).payload["payload"] == {"t": "user:1"}
        # ...and one it does not: skipped, still 202, as Supabase does.
        response = await http.post(api, json=batch("user:0001", True), headers=user)
        assert response.status_code == 202
        response = await http.post(
            f"{api}/user:0001/events/n?private=true", json={"single": True}, headers=user
        )
        assert response.status_code == 202
        response = await http.post(
            f"{api}/user:1/events/n?private=true", json={"single": True}, headers=user
        )
        assert response.status_code == 202
        got = await private.next("broadcast")
        assert got.topic == "realtime:user:1"
        assert got.payload["payload"] == {"single": True}
        assert await private.silent(0.2)
        # The anon key may not write to a private topic: skipped.
        response = await http.post(api, json=batch("user:1", True), headers=anon)
        assert response.status_code == 202
        assert await private.silent(0.2)
        # A plugin channel (backed by the database) stays for the service key.
        plugin = batch("position-updates", False)
        response = await http.post(api, json=plugin, headers=user)
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
        # A bad token is refused; so is a payload over the message limit (Supabase: 422).
        bad = {"apikey": bridge.user_token("1", ttl=-5)}
        assert (await http.post(api, json=batch("news", False), headers=bad)).status_code == 401
        big = batch("news", False, {"blob": "x" * (300 * 1024)})
        response = await http.post(api, json=big, headers=anon)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_payload"
        assert await public.silent(0.2)


@pytest.mark.parametrize("presence", [False, True])
async def test_a_join_needs_broadcast_or_presence_read(
    start_bridge: BridgeFactory, db: asyncpg.Connection, presence: bool
) -> None:
    # Only presence is readable: the join passes when presence is on (Supabase asks
    # the presence policy only then), and the member then gets presence, not broadcasts.
    await db.execute(
        "CREATE POLICY p ON realtime.messages FOR SELECT TO authenticated "
        "USING (extension = 'presence')"
    )
    bridge = await start_bridge()
    config = {"private": True, "presence": {"enabled": presence, "key": "me"}}
    async with phx(bridge, key=bridge.anon_key) as user, phx(bridge) as service:
        reply = await user.join("realtime:room", config, bridge.user_token("1"))
        if not presence:
            assert reply.payload["response"]["reason"] == DENIED + "room"
            return
        assert reply.payload["status"] == "ok"
        assert (await user.next("presence_state")).payload == {}
        await service.join("realtime:room", {"private": True})
        await service.push(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "n", "payload": {}}
        )
        assert await user.silent(0.3)
