"""The command line: `serve` on the embedded default (what `make run` does), `migrate`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import default_migrations_dir, discover
from tests.conftest import ROOT

# The command line under test: this interpreter's copy of the package.
CLI = (sys.executable, "-m", "realtime_bridge")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SUPABASE_URL", "PORT"}}
    env.update(extra)
    return env


@asynccontextmanager
async def serving(
    cwd: Path, env: dict[str, str], *args: str, program: Sequence[str] = CLI
) -> AsyncIterator[str]:
    """Run `realtime-bridge serve` as a user would; yield its base URL once healthy."""
    port = env.get("PORT") or str(free_port())
    command = [*program, "serve", *args]
    if "PORT" not in env and "--port" not in args:
        command += ["--port", port]
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(300):
                if process.poll() is not None:
                    raise AssertionError(
                        f"serve exited: {process.stdout.read() if process.stdout else ''}"
                    )
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("serve never became healthy")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_serve_starts_an_embedded_postgres_whose_data_survives_a_restart(
    tmp_path: Path,
) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    env = clean_env(PORT=str(free_port()), ENABLE_TESTING_API="true")
    try:
        async with serving(tmp_path, env) as url, httpx.AsyncClient(base_url=url) as http:
            health = (await http.get("/health")).json()
            assert health["database"] == "embedded"
            assert health["status"] == "ok"
            keys = printed_keys(tmp_path, env)
            signal = {"symbol": "AAPL", "signal_type": "BUY", "entry_price": 190.5}
            anon = {"apikey": keys["SUPABASE_ANON_KEY"]}
            denied = await http.post("/api/testing/simulate-signal", json=signal, headers=anon)
            assert denied.status_code == 403
            service = {"Authorization": f"Bearer {keys['SUPABASE_SERVICE_KEY']}"}
            http.headers.update(service)
            created = await http.post("/api/testing/simulate-signal", json=signal)
            assert created.status_code == 201
            poll = await http.get(
                "/api/channels/trade-updates/events", params={"since": 0, "wait": 5}
            )
            first_seq = poll.json()["next_seq"]
            assert first_seq >= 1
        assert (tmp_path / ".realtime-bridge" / "pgdata" / "PG_VERSION").exists()
        # Stopping the service stops the Postgres it started: no orphan server.
        assert not EmbeddedPostgres(tmp_path / ".realtime-bridge").is_running()

        async with (
            serving(tmp_path, env) as url,
            httpx.AsyncClient(base_url=url, headers=service) as http,
        ):
            # The secret is kept in the data folder: the same keys still work.
            assert printed_keys(tmp_path, env) == keys
            health = (await http.get("/health")).json()
            assert health["last_seq"] >= first_seq
            poll = await http.get(
                "/api/channels/trade-updates/events", params={"since": 0, "wait": 0}
            )
            assert [e["data"]["symbol"] for e in poll.json()["events"]] == ["AAPL"]
    finally:
        EmbeddedPostgres(tmp_path / ".realtime-bridge").stop("immediate")


def printed_keys(cwd: Path, env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", "keys"],
        env=env, cwd=cwd, capture_output=True, text=True, check=True,
    )  # fmt: skip
    pairs = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert set(pairs) == {"SUPABASE_ANON_KEY", "SUPABASE_SERVICE_KEY"}
    return pairs


async def test_migrate_command_reports_then_is_a_no_op(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP SCHEMA realtime_bridge CASCADE")
    await conn.close()
    env = clean_env(DATABASE_URL=dsn)
    first = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", "migrate"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"applied {len(discover(default_migrations_dir()))} migration(s)" in first.stdout
    second = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", "migrate"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "up to date" in second.stdout


def test_a_bad_setting_fails_loudly_with_its_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", "serve"],
        env=clean_env(POLL_INTERVAL="soon"), cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "POLL_INTERVAL" in result.stderr


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "realtime-bridge"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "serve" in result.stdout
    assert "migrate" in result.stdout


@pytest.mark.parametrize("command", [["serve", "--port", "notanumber"], ["launch"]])
def test_usage_errors_exit_non_zero(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realtime_bridge", *command], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
