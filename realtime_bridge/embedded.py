"""The zero-configuration Postgres: a private server in a local data folder.

Uses the Postgres 16 binaries shipped in the `pgserver` wheel. The server
listens on a Unix socket inside the data folder and on a loopback TCP port
chosen on first start and kept in the folder, so the DSN stays the same
across restarts and the data survives them. As root, Postgres refuses to
run, so the server runs as the unprivileged `pgserver` user (created when
missing, as pgserver itself does).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from realtime_bridge.errors import ConfigurationError

logger = logging.getLogger(__name__)

_SERVICE_USER = "pgserver"


def _bin_dir() -> Path:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - pgserver is a dependency
        raise ConfigurationError("the embedded Postgres needs the 'pgserver' package") from exc
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """Start, stop and locate a Postgres server that lives in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.bin = _bin_dir()
        self.user = _SERVICE_USER if os.name == "posix" and os.geteuid() == 0 else None
        self._socket_dir: Path | None = None
        self.started_here = False

    @property
    def port(self) -> int:
        return int((self.data_dir / "port").read_text().strip())

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> str:
        command = [str(self.bin / args[0]), *args[1:]]
        with tempfile.TemporaryFile("w+") as out:
            # Files, not pipes: pg_ctl's server inherits stdout and would keep
            # a pipe open forever.
            result = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                user=self.user,
                check=False,
                cwd="/",
            )
            out.seek(0)
            output = out.read()
        if result.returncode != 0:
            raise ConfigurationError(f"{args[0]} failed ({result.returncode}): {output.strip()}")
        return output

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(self.bin)
            for path in (self.bin, self.bin.parent / "lib", self.bin.parent / "share"):
                if path.exists():
                    subprocess.run(["chmod", "-R", "go+rX", str(path)], check=True)
            shutil.chown(self.data_dir, self.user, self.user)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            if self.user is not None:
                shutil.chown(self.pgdata, self.user, self.user)
            logger.info("initialising embedded Postgres in %s", self.pgdata)
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
            )
        port_file = self.data_dir / "port"
        if not port_file.exists():
            port_file.write_text(f"{_free_port()}\n")

    def is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def start(self) -> str:
        """Start the server (initialising the folder the first time); return its DSN."""
        self._prepare()
        if not self.is_running():
            self.started_here = True
            socket_dir = self._socket_directory()
            self._run(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.pgdata / "server.log"),
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {socket_dir} -c max_connections=200 "
                "-c fsync=on -c shared_buffers=128MB "
                # Logical replication, so the bridge reads the WAL (CAPTURE=auto).
                "-c wal_level=logical -c max_replication_slots=100 -c max_wal_senders=100",
                "start",
            )
            logger.info("embedded Postgres listening on 127.0.0.1:%s", self.port)
        return self.dsn()

    def _socket_directory(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; fall back to /tmp.
        candidate = self.pgdata
        if len(str(candidate / f".s.PGSQL.{self.port}")) > 100:
            candidate = Path(tempfile.gettempdir()) / f"rb-pg-{self.port}"
            candidate.mkdir(exist_ok=True)
            if self.user is not None:
                shutil.chown(candidate, self.user, self.user)
        return candidate

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()
