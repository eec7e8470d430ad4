"""The servers under test, each in its own process.

* `BridgeServer`: ``python -m realtime_bridge serve`` (the real path), with a
  JWT secret of our own so we can sign its service key and user tokens.
* `FloorServer`: ``python -m bench.floor_server``, the raw floor (pg_notify →
  asyncpg listener → bare `websockets` server).
* `NaiveServer`: ``python -m bench.naive_server``, the naive FastAPI-style
  approach (Starlette loop awaiting ``send_json`` per client, and polling).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil

from bench.config import REPO
from bench.lifecycle import Managed
from bench.limits import pin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(process: Any) -> float:
    """User + system CPU of a psutil process (0 once it is gone)."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def tree_cpu_seconds(process: Any) -> float:
    """CPU of a process and its live children (Postgres backends)."""
    if process is None:
        return 0.0
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        children = []
    return cpu_seconds(process) + sum(cpu_seconds(child) for child in children)


class ServerProcess(Managed):
    """Start a server on a free loopback port, wait until it answers, stop it on exit."""

    name = "server"

    def __init__(self, log_path: Path, cpus: list[int] | None) -> None:
        self.log_path = log_path
        self.cpus = cpus
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: Any = None

    # to override ------------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {**os.environ, "LOG_LEVEL": "warning"}

    def ready(self, http: httpx.Client) -> str | None:
        """None when the server is ready, else what it answered."""
        raise NotImplementedError

    @property
    def ws_url(self) -> str:
        raise NotImplementedError

    # ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches only us, and
            # we stop the server ourselves (after the clients are gone).
            self.process = subprocess.Popen(
                self.argv(),
                env=self.env(),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.process.pid)
        pin(self.process.pid, self.cpus)
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the {self.name} exited with code {self.process.returncode} during "
                        "start-up:\n" + self.log_tail()
                    )
                try:
                    answer = self.ready(http)
                    if answer is None:
                        return
                    last = answer
                except (httpx.HTTPError, OSError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
        raise RuntimeError(
            f"the {self.name} did not become ready in {timeout:.0f} s ({last}):\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return 0.0 if self.ps is None else cpu_seconds(self.ps)

    def rss_bytes(self) -> int:
        try:
            return int(self.ps.memory_info().rss)
        except (psutil.Error, AttributeError):
            return 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class BridgeServer(ServerProcess):
    """The real path: `python -m realtime_bridge serve`."""

    name = "bridge"

    def __init__(
        self, dsn: str, log_path: Path, cpus: list[int] | None, capture: str | None = None
    ) -> None:
        super().__init__(log_path, cpus)
        self.dsn = dsn
        self.capture = capture  # CAPTURE (None: the bridge's default, auto)
        # The bridge refuses clients without a key: give it a secret of our
        # own and sign keys with it (what `realtime-bridge keys` does).
        self.jwt_secret = secrets.token_urlsafe(32)
        self.service_key = self._token({"role": "service_role"})

    def _token(self, claims: dict[str, Any]) -> str:
        now = int(time.time())
        return jwt.encode(
            {**claims, "iat": now - 10, "exp": now + 86400}, self.jwt_secret, algorithm="HS256"
        )

    def user_token(self, user: int) -> str:
        """An `authenticated` token for user u<user>, as a signed-in browser holds."""
        return self._token({"role": "authenticated", "sub": f"u{user}"})

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "realtime_bridge", "serve", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "PLUGIN_PATHS": str(REPO / "plugins"),
            "LOG_LEVEL": "warning",
            "SUPABASE_JWT_SECRET": self.jwt_secret,
            "MIGRATE_ON_START": "false",
            # Every bench client connects from loopback.
            "MAX_CONNECTIONS_PER_IP": "1000000",
            **({"CAPTURE": self.capture} if self.capture else {}),
        }

    def ready(self, http: httpx.Client) -> str | None:
        response = http.get(f"{self.url}/health")
        return None if response.status_code == 200 else f"{response.status_code}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/db_subscriptions"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service_key}"}

    def pauses(self) -> dict[str, float]:
        """Full GC passes, their seconds and the longest loop stall so far, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10.0)
            response.raise_for_status()
        except httpx.HTTPError:
            return {}
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.labels.get("generation", "2") != "2":
                    continue
                if sample.name in (
                    "realtime_bridge_gc_collections_total",
                    "realtime_bridge_gc_pause_seconds_sum",
                    "realtime_bridge_gc_pause_max_seconds",
                    "realtime_bridge_loop_stall_max_seconds",
                ):
                    found[sample.name] = sample.value
        return found

    def stats(self) -> dict[str, Any]:
        """The bridge's /api/stats ({} if it cannot be read)."""
        try:
            response = httpx.get(f"{self.url}/api/stats", headers=self.headers, timeout=10.0)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body


class FloorServer(ServerProcess):
    """The raw floor: a bare `websockets` server fed by pg_notify."""

    name = "floor server"

    def __init__(self, dsn: str, log_path: Path, cpus: list[int] | None) -> None:
        super().__init__(log_path, cpus)
        self.dsn = dsn

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.floor_server",
            "--dsn",
            self.dsn,
            "--port",
            str(self.port),
        ]

    def ready(self, http: httpx.Client) -> str | None:
        # It listens only once its LISTEN is registered.
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


class NaiveServer(ServerProcess):
    """The naive approach: Starlette + uvicorn defaults, send_json per client per event."""

    name = "naive server"

    def __init__(
        self, listen_dsn: str, poll_dsn: str, log_path: Path, cpus: list[int] | None
    ) -> None:
        super().__init__(log_path, cpus)
        self.listen_dsn = listen_dsn
        self.poll_dsn = poll_dsn

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.naive_server",
            "--listen-dsn",
            self.listen_dsn,
            "--poll-dsn",
            self.poll_dsn,
            "--port",
            str(self.port),
        ]

    def ready(self, http: httpx.Client) -> str | None:
        response = http.get(f"{self.url}/ready")
        return None if response.status_code == 200 else f"{response.status_code}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def poll_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/poll"
