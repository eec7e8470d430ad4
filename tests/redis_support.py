"""Redis for the backplane tests: REDIS_URL if set, else a `redis-server` from PATH.

`redis_server` (session-wide) fails loudly when neither is available: the
multi-instance tests are not optional. `RedisProcess` is also used directly
by tests that stop and restart Redis under running bridges.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisProcess:
    """One throwaway redis-server on a loopback port (no persistence)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _dir: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="rb-redis-")
    )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "the backplane tests need Redis: set REDIS_URL or put redis-server on PATH "
                "(Debian: apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Kill it at once (as an outage would)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A Redis URL for the session: REDIS_URL, or a redis-server started here."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess()
    server.start()
    try:
        yield server.url
    finally:
        server.close()
