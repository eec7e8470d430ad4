"""Process limits and CPU placement the benchmark needs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


def raise_fd_limit() -> int:
    """Raise the open-file soft limit as far as allowed; return the new soft limit.

    Tries to raise the hard limit too (works as root with CAP_SYS_RESOURCE);
    otherwise the soft limit goes up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    wanted = 1_048_576
    with contextlib.suppress(OSError):
        wanted = min(wanted, int(Path("/proc/sys/fs/nr_open").read_text().strip()))
    for limit in ((wanted, wanted), (hard, hard)):
        if limit[0] <= soft or limit[0] == resource.RLIM_INFINITY:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
        except (ValueError, OSError):
            continue
        return limit[0]
    return soft


def fd_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (as the bridge's server uses), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server under test gets, and which everything else gets.

    With ``--pin`` and 2+ CPUs the server (bridge, floor or naive) has the
    last CPU to itself and the load (clients, writer, Postgres) shares the
    others: a single-threaded server can use one core at most anyway, and
    the load generators cannot steal it. Off by default: on a 2-CPU box the
    one CPU left is too little for Postgres, whose round trips are on the
    bridge's critical path. None: no pinning.
    """

    server: list[int] | None
    load: list[int] | None

    @property
    def describe(self) -> str:
        if self.server is None or self.load is None:
            return "not pinned"
        return f"server on CPU {self.server}, clients + writer + Postgres on CPU {self.load}"


def placement(enabled: bool) -> Placement:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    if not enabled or len(cpus) < 2:
        return Placement(None, None)
    return Placement([cpus[-1]], cpus[:-1])


def pin(pid: int, cpus: list[int] | None, *, children: bool = False) -> None:
    """Best effort: set the CPU affinity of `pid` (and its children)."""
    if not cpus:
        return
    try:
        process = psutil.Process(pid)
        process.cpu_affinity(cpus)
        if children:
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.cpu_affinity(cpus)
    except (psutil.Error, OSError, ValueError):
        pass
