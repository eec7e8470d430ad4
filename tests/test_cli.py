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
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import default_migrations_dir, discover
from realtime_bridge.testing import with_database
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


def run_cli(
    *args: str, cwd: Path = ROOT, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=clean_env(**env), cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_clear_line(result: subprocess.CompletedProcess[str], *wanted: str) -> str:
    """The exit is non-zero and stderr is one line (no traceback) holding every `wanted`."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in wanted:
        assert text in lines[0], lines[0]
    return lines[0]


def with_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("refused", "connection refused"),
        ("unknown host", "unknown"),
        ("bad credentials", "nobody_here"),
        ("unknown database", "no_such_database"),
        ("not a url", "postgresql://"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_bad_database_url_is_one_clear_line(dsn: str, command: str, case: str, said: str) -> None:
    server = urlsplit(dsn)
    at = f"{server.hostname}:{server.port}"
    url = {
        "refused": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        "unknown host": "postgresql://postgres@no-such-host.invalid:5432/postgres",
        "bad credentials": with_user(dsn, "nobody_here"),
        "unknown database": with_database(dsn, "no_such_database"),
        "not a url": "db.example.com/app",
    }[case]
    where = {
        "refused": urlsplit(url).netloc.partition("@")[2],
        "unknown host": "no-such-host.invalid:5432",
        "not a url": url,
    }.get(case, at)
    args = ["--port", str(free_port())] if command == "serve" else []
    result = run_cli(command, *args, DATABASE_URL=url)
    assert result.returncode == 2
    one_clear_line(result, "DATABASE_URL", said, where)


def test_a_bad_log_level_names_the_variable_value_and_choices() -> None:
    result = run_cli("serve", "--port", str(free_port()), LOG_LEVEL="LOUD")
    line = one_clear_line(result, "LOG_LEVEL", "LOUD", "'INFO'", "'DEBUG'")
    assert "KeyError" not in line


async def test_a_port_in_use_is_reported_before_ready_naming_port(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", cwd=tmp_path, DATABASE_URL=dsn, PORT=str(port))
    assert result.returncode == 2
    one_clear_line(result, "PORT", str(port), "in use")
    assert "realtime-bridge ready" not in result.stdout + result.stderr


async def test_a_second_serve_in_the_same_folder_says_one_is_running(tmp_path: Path) -> None:
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    first_port = str(free_port())
    env = clean_env(PORT=first_port)
    try:
        async with serving(tmp_path, env):
            result = run_cli("serve", "--port", str(free_port()), cwd=tmp_path)
            line = one_clear_line(result, "already running", f"port {first_port}", "DATA_DIR")
            assert "pid " in line
            # The same port (a second `make run`): still the clearer message.
            again = run_cli("serve", cwd=tmp_path, PORT=first_port)
            one_clear_line(again, "already running")
    finally:
        EmbeddedPostgres(tmp_path / ".realtime-bridge").stop("immediate")


def _lower_open_file_limit() -> None:
    """In the child before exec: the soft limit a default shell gives (1024), or lower."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))


def _open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


async def test_serve_raises_the_open_file_soft_limit_to_the_hard_limit(
    tmp_path: Path, dsn: str
) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 256, "the test needs a hard limit above 256 to see the soft one move"
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(DATABASE_URL=dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_lower_open_file_limit,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("serve never became healthy")
        assert _open_file_limits(process.pid) == (hard, hard)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert f"open-file limit raised from 256 to {hard}" in output, output
