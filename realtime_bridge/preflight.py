"""Checks `serve` makes before it announces anything: one clear line when they fail.

* `claim_data_dir`: one `serve` per embedded data folder (a lock held for
  the process's lifetime, with its pid and port written next to it).
* `bind`: the listening socket, bound here and handed to uvicorn, so a port
  in use is reported before the bridge starts (and cannot be taken between
  the check and the start).
* `raise_open_file_limit`: the open-file soft limit goes up to the hard
  limit (every socket is a file: the default soft limit of 1024 would cap
  the bridge near 1,000 connections whatever the machine allows).
* `check_database`: DATABASE_URL answers, with which setting, which
  host:port, what Postgres said and what to check when it does not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import asyncpg

from realtime_bridge.errors import ConfigurationError
from realtime_bridge.redact import redact

logger = logging.getLogger(__name__)


class PreflightError(ConfigurationError):
    """A start-up check failed; the message is the one line to show."""


# open files ------------------------------------------------------------------


def raise_open_file_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; return (before, after), logged.

    Only the soft limit: raising the hard one needs privileges a service
    should not have. An unlimited hard limit is not a value the soft one
    may take on every kernel, so it is capped at fs.nr_open there.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text().strip())
        except (OSError, ValueError):
            target = 1_048_576
    if soft == resource.RLIM_INFINITY or soft >= target:
        logger.info("open-file limit %s, already as high as allowed", soft)
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning(
            "open-file limit stays %d (hard %d): %s; each connection needs one", soft, hard, exc
        )
        return soft, soft
    logger.info("open-file limit raised from %d to %d (the hard limit)", soft, target)
    return soft, target


# data folder ---------------------------------------------------------------


@dataclass
class DataDirLock:
    """Held while `serve` runs on an embedded data folder; released when the process ends."""

    path: Path
    file: IO[str]

    def record(self, port: int) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()} {port}\n")
        self.file.flush()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def claim_data_dir(data_dir: Path) -> DataDirLock:
    """Lock `data_dir` for this process, or say which process already serves it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "serve.lock"
    file = path.open("a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().split()
        file.close()
        who = ""
        if len(holder) == 2 and all(part.isdigit() for part in holder):
            who = f" (pid {holder[0]}, port {holder[1]})"
        raise PreflightError(
            f"realtime-bridge is already running on the embedded database in {data_dir}{who}; "
            "use that one, stop it first, or set DATA_DIR to another folder"
        ) from None
    return DataDirLock(path, file)


# the port ------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket for HOST:PORT, or a PreflightError naming the setting to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now (not only bound): with SO_REUSEADDR a second process
        # could otherwise bind the same port while this one is starting up.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PreflightError(
                f"port {port} on {host} is already in use by another program; "
                "set PORT (or --port) to a free port, or stop what is using it"
            ) from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise PreflightError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "set HOST (or --host) to an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
            ) from None
        raise PreflightError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); set PORT (or --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


# the database ----------------------------------------------------------------


def _where(dsn: str) -> tuple[str, str, str, str]:
    """(host:port, host, user, database) as the DSN names them, with libpq's defaults."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    user = unquote(parts.username or "")
    database = unquote(parts.path.lstrip("/")) or user or "(the user's)"
    return f"{host}:{port}", host, user, database


def describe_connect_error(exc: BaseException, dsn: str) -> str:
    """One line: the setting, host:port, what the server or network said, what to check."""
    at, host, user, database = _where(dsn)
    said = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    prefix = f"DATABASE_URL: cannot connect to Postgres at {at}"
    if isinstance(exc, socket.gaierror):
        hint = f"host {host!r} is unknown ({said}); check the host name in DATABASE_URL"
    elif isinstance(exc, ConnectionRefusedError):
        hint = "connection refused; check that Postgres is running there and the port is right"
    elif isinstance(exc, TimeoutError):
        hint = "no answer in time; check the host, the port and any firewall in between"
    elif isinstance(exc, asyncpg.InvalidPasswordError):
        hint = f"Postgres said: {said}; check the user and password in DATABASE_URL"
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        hint = f"Postgres said: {said}; check the user {user!r} in DATABASE_URL"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        hint = (
            f"Postgres said: {said}; check the database name {database!r} in DATABASE_URL "
            "(or create it)"
        )
    elif isinstance(exc, asyncpg.PostgresError):
        hint = f"Postgres said: {said}"
    else:
        hint = f"{said}; check DATABASE_URL"
    return f"{prefix}: {hint}"


async def check_database(dsn: str, timeout: float = 10.0) -> None:
    """Connect once to `dsn`; a PreflightError with one clear line if that fails."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PreflightError(describe_connect_error(exc, dsn)) from exc
    except ValueError as exc:  # asyncpg's own DSN parser
        raise PreflightError(f"DATABASE_URL: {redact(str(exc))}") from exc
    await conn.close()
