"""The bridge under test, run as `python -m realtime_bridge serve` in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from bench.config import REPO


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


class BridgeServer:
    """Start the server on a free loopback port, wait for /health, stop it on exit."""

    def __init__(self, dsn: str, log_path: Path) -> None:
        self.dsn = dsn
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ps: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/db_subscriptions"

    def __enter__(self) -> BridgeServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "PLUGIN_PATHS": str(REPO / "plugins"),
            "LOG_LEVEL": "warning",
        }
        with self.log_path.open("wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches only us, and
            # we stop the server ourselves (after the clients are gone).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "realtime_bridge", "serve", "--port", str(self.port)],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the bridge exited with code {self.process.returncode} during start-up:\n"
                        + self.log_tail()
                    )
                try:
                    response = http.get(f"{self.url}/health")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:300]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise RuntimeError(
            f"the bridge did not become healthy in {timeout:.0f} s ({last}):\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stats(self) -> dict[str, Any]:
        """The bridge's /api/stats ({} if it cannot be read)."""
        try:
            response = httpx.get(f"{self.url}/api/stats", timeout=10.0)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body

    def cpu_seconds(self) -> float:
        return 0.0 if self.ps is None else cpu_seconds(self.ps)

    def rss_mb(self) -> float:
        try:
            return float(self.ps.memory_info().rss) / 2**20
        except (psutil.Error, AttributeError):
            return 0.0

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
