"""P9: 1, 2 and 3 bridge instances behind HAProxy, one Redis, in one run.

The same clients and writer as P1/P3, connected through a real HAProxy
(round robin) in front of N `realtime-bridge serve` processes that share
the database and a Redis (REDIS_URL). For each N: P1 (per-user latency at
the P1 rate) and P3 (fan-out burst), plus the statements every instance
sent to Postgres during P1, counted by one proxy all of them connect
through. N = 2 and 3 run twice: with the change stream (followers read the
leader's changes from Redis) and without it (CHANGE_STREAM=false: each
follower reads the log from Postgres), so the database load per instance
added is measured both ways.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.clients import SocketSpec
from bench.database import host_port, via_port
from bench.pgproxy import CountingProxy
from bench.report import Record, detail
from bench.scenarios import Environment, Run, run_load, say
from bench.servers import BridgeServer, ServerProcess, cpu_seconds
from bench.writer import UpdatePlan
from realtime_bridge.testing import real_redis

# (instances, fan-out) in the order they run; a single instance has no followers.
LAYOUTS: tuple[tuple[int, str], ...] = (
    (1, "stream"),
    (2, "stream"),
    (3, "stream"),
    (2, "log"),
    (3, "log"),
)


def _find(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"P9 needs {name} on PATH (Debian: apt-get install {name})")
    return found


class ClusterBridge(BridgeServer):
    """One instance of the cluster: REDIS_URL, one JWT secret for all, CHANGE_STREAM."""

    def __init__(
        self, dsn: str, log_path: Path, redis_url: str, secret: str, stream: bool, prefix: str
    ) -> None:
        super().__init__(dsn, log_path, None)
        self.jwt_secret = secret
        self.service_key = self._token({"role": "service_role"})
        self.redis_url = redis_url
        self.stream = stream
        self.prefix = prefix

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
            "CHANGE_STREAM": "true" if self.stream else "false",
        }


class Front(ServerProcess):
    """HAProxy in front of the instances: what the clients connect to."""

    name = "haproxy"

    def __init__(self, log_path: Path, instances: list[ClusterBridge]) -> None:
        super().__init__(log_path, None)
        self.instances = instances
        self.config = log_path.with_suffix(".cfg")

    def argv(self) -> list[str]:
        servers = "\n".join(
            f"    server b{n} 127.0.0.1:{i.port} check inter 1s"
            for n, i in enumerate(self.instances)
        )
        self.config.write_text(
            "global\n    maxconn 8000\n"
            "defaults\n    mode http\n    maxconn 8000\n    timeout connect 5s\n"
            "    timeout client 120s\n    timeout server 120s\n    timeout tunnel 1h\n"
            f"frontend public\n    bind 127.0.0.1:{self.port}\n    default_backend bridges\n"
            "backend bridges\n    balance roundrobin\n    option httpchk GET /health\n"
            f"{servers}\n"
        )
        return [_find("haproxy"), "-db", "-f", str(self.config)]

    def ready(self, http: httpx.Client) -> str | None:
        response = http.get(f"{self.url}/health")
        return None if response.status_code == 200 else f"{response.status_code}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/db_subscriptions"

    def cpu_seconds(self) -> float:
        """The instances and the balancer together (the "server" side)."""
        own = 0.0 if self.ps is None else cpu_seconds(self.ps)
        return own + sum(i.cpu_seconds() for i in self.instances)


@dataclass
class Layout:
    """What one layout measured."""

    instances: int
    fanout: str
    p1: Run | None = None
    p3: Run | None = None
    statements: int = 0  # through the proxy during P1, all instances
    window: float = 0.0  # P1 seconds (writer start → drained)
    # per instance during P1: role, statements its source sent to read the log
    roles: list[str] = field(default_factory=list)
    follower_reads: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.instances == 1:
            return "1 instance"
        return f"{self.instances} instances, {self.fanout}"


def _source_reads(instance: ClusterBridge) -> tuple[str, int]:
    stats = instance.stats()
    return str(stats.get("role")), int(stats.get("follower_reads") or 0)


def cluster_session(env: Environment) -> list[Layout]:
    config = env.config
    clients = min(config.clients, 1000)
    layouts: list[Layout] = []
    with (
        real_redis() as redis_url,
        CountingProxy(env.ctx, host_port(env.db.dsn), env.place.load) as proxy,
    ):
        dsn = via_port(env.db.dsn, proxy.port)
        secret = "p9-" + "s" * 40
        for n, fanout in LAYOUTS:
            layout = Layout(n, fanout)
            layouts.append(layout)
            label = f"P9 {layout.label}"
            instances = [
                ClusterBridge(
                    dsn,
                    env.workdir / f"p9-{n}-{fanout}-{i}.log",
                    redis_url,
                    secret,
                    fanout == "stream",
                    f"p9-{n}-{fanout}",
                )
                for i in range(n)
            ]
            with contextlib.ExitStack() as stack:
                for instance in instances:  # the first to start leads
                    stack.enter_context(instance)
                front = stack.enter_context(Front(env.workdir / f"p9-{n}-{fanout}.log", instances))
                say(label, f"{n} instance(s) behind haproxy on port {front.port}")
                env.proxy = proxy
                try:
                    _measure(env, front, instances, layout, clients)
                finally:
                    env.proxy = None
                    env.fleet.close_sockets()
            say(label, describe(layout))
    return layouts


def _measure(
    env: Environment,
    front: Front,
    instances: list[ClusterBridge],
    layout: Layout,
    clients: int,
) -> None:
    config = env.config
    specs = [SocketSpec(f"apikey={instances[0].user_token(u)}", u) for u in range(clients)]
    report = env.fleet.open(front.ws_url, specs)
    if report.failed:
        layout.problems.append(f"{report.failed} of {clients} sockets failed: {report.errors[:2]}")
        return
    time.sleep(0.5)
    before = [_source_reads(i) for i in instances]
    plan = UpdatePlan(
        target="real",
        base=env.base(int(config.p1_rate * config.p1_duration)),
        users=clients,
        rate=config.p1_rate,
        duration=config.p1_duration,
        max_events=int(config.p1_rate * config.p1_duration),
        connections=config.writer_connections,
    )
    layout.p1 = run_load(env, front, plan, 1, kind=f"real-p9-{layout.instances}")
    after = [_source_reads(i) for i in instances]
    if layout.p1.queries is not None:
        layout.statements = layout.p1.queries.statements
        layout.window = layout.p1.window
    layout.roles = [role for role, _ in after]
    layout.follower_reads = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    env.fleet.close_sockets()
    table = [SocketSpec(f"apikey={instances[0].service_key}", None)] * clients
    report = env.fleet.open(front.ws_url, table)
    if report.failed:
        layout.problems.append(f"fan-out: {report.failed} sockets failed")
        return
    time.sleep(0.5)
    plan = UpdatePlan(
        target="real",
        base=env.base(config.p3_events),
        users=clients,
        rate=0,
        duration=60,
        max_events=config.p3_events,
        connections=config.writer_connections,
    )
    layout.p3 = run_load(env, front, plan, clients, kind=f"real-p9-{layout.instances}")


def _per_s(count: float, window: float) -> float | None:
    return round(count / window, 1) if window > 0 else None


def describe(layout: Layout) -> str:
    parts = []
    if layout.p1 is not None:
        parts.append(
            f"P1 p50 {layout.p1.p50 or 0:.1f} / p99 {layout.p1.p99 or 0:.1f} ms, "
            f"lost {layout.p1.lost}"
        )
    if layout.p3 is not None:
        parts.append(f"P3 {layout.p3.throughput or 0:,.0f} frames/s, lost {layout.p3.lost}")
    if layout.window:
        parts.append(
            f"DB {layout.statements / layout.window / layout.instances:.1f} statements/s "
            "per instance"
        )
    return "; ".join(parts + layout.problems) or "nothing measured"


def records(layouts: list[Layout]) -> list[Record]:
    out: list[Record] = []
    for layout in layouts:
        name = layout.label
        p1, p3 = layout.p1, layout.p3
        if p3 is not None:
            out.append(detail("P9", f"{name}: P3 fan-out, total", p3.throughput, "frames/s"))
            out.append(
                detail(
                    "P9",
                    f"{name}: P3 lost / duplicated",
                    f"{p3.lost} / {p3.delivery.duplicates}",
                    "frames",
                )
            )
        if p1 is not None:
            out.append(detail("P9", f"{name}: P1 p50", p1.p50, "ms"))
            out.append(detail("P9", f"{name}: P1 p99", p1.p99, "ms"))
            out.append(
                detail(
                    "P9",
                    f"{name}: P1 lost / duplicated",
                    f"{p1.lost} / {p1.delivery.duplicates}",
                    "frames",
                )
            )
        if layout.window:
            total = _per_s(layout.statements, layout.window)
            out.append(detail("P9", f"{name}: DB statements/s, all instances", total, "/s"))
            out.append(
                detail(
                    "P9",
                    f"{name}: DB statements/s per instance",
                    _per_s(layout.statements / layout.instances, layout.window),
                    "/s",
                )
            )
            followers = [
                reads
                for role, reads in zip(layout.roles, layout.follower_reads, strict=True)
                if role == "follower"
            ]
            if followers:
                out.append(
                    detail(
                        "P9",
                        f"{name}: log reads/s per follower (its source)",
                        _per_s(sum(followers) / len(followers), layout.window),
                        "/s",
                    )
                )
        for problem in layout.problems:
            out.append(detail("P9", f"{name}: problem", problem, ""))
    return out


def summary(layouts: list[Layout]) -> dict[str, Any]:
    return {layout.label: describe(layout) for layout in layouts}
