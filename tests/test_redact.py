"""Keys and tokens never reach a log line: `redact()` and a real `serve`'s whole output."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from realtime_bridge.redact import MASK, redact
from tests.conftest import ROOT
from tests.test_cli import CLI, clean_env, free_port

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "GET /sse/x?apikey={JWT}&since=3 HTTP/1.1" 200',
        '"WebSocket /realtime/v1/websocket?vsn=1.0.0&apikey=opaque-key-123" [accepted]',
        "GET /ws?access_token=opaque-key-123",
        "GET /ws?token=opaque-key-123&x=1",
        "Authorization: Bearer opaque-key-123",
        "{'authorization': 'Bearer opaque-key-123'}",
        '{"access_token": "opaque-key-123", "topic": "t"}',
        f"joined with {JWT}",
        "postgresql://app:opaque-key-123@db:5432/app failed",
    ],
)
def test_redact_masks_keys_tokens_and_passwords(line: str) -> None:
    masked = redact(line)
    assert "opaque-key-123" not in masked
    assert JWT not in masked
    assert MASK in masked


def test_redact_leaves_ordinary_text_alone() -> None:
    line = '127.0.0.1:5 - "GET /api/channels/trades/events?since=3&wait=5 HTTP/1.1" 200'
    assert redact(line) == line


async def test_no_key_appears_in_the_output_of_a_serving_bridge(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    port = free_port()
    env = clean_env(
        DATABASE_URL=dsn, PORT=str(port), LOG_LEVEL="DEBUG", SUPABASE_JWT_SECRET="s" * 40
    )
    keys = subprocess.run(
        [*CLI, "keys"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    service = dict(line.split("=", 1) for line in keys.splitlines())["SUPABASE_SERVICE_KEY"]
    anon = dict(line.split("=", 1) for line in keys.splitlines())["SUPABASE_ANON_KEY"]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [*CLI, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(300):
                assert process.poll() is None, log.read_text()
                try:
                    if (await http.get("/health", params={"apikey": service})).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            await http.get("/api/stats", headers={"Authorization": f"Bearer {service}"})
            await http.get("/api/stats", params={"access_token": service})
            await http.get("/api/stats", params={"token": anon})
            await http.get("/api/stats", headers={"apikey": service})
            await http.get("/api/stats", params={"apikey": "not-a-real-key"})
        ws = f"ws://127.0.0.1:{port}"
        async with websockets.connect(f"{ws}/ws/db_subscriptions?apikey={service}"):
            pass
        async with websockets.connect(
            f"{ws}/realtime/v1/websocket?apikey={service}&vsn=1.0.0"
        ) as phoenix:
            await phoenix.send(
                '{"topic":"realtime:x","event":"phx_join","ref":"1","join_ref":"1",'
                f'"payload":{{"access_token":"{service}","config":{{}}}}}}'
            )
            await asyncio.wait_for(phoenix.recv(), 5)
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{ws}/ws/db_subscriptions?apikey=not-a-real-key"):
                pass
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    output = log.read_text()
    assert "GET /api/stats" in output  # the access log was on
    assert "/ws/db_subscriptions" in output
    for secret in (service, anon, "not-a-real-key"):
        assert secret not in output
        assert secret.rsplit(".", 1)[-1] not in output  # not even the signature
