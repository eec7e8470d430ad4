"""The scenarios, run as sessions against one server at a time.

Each session starts one server, connects the shared client fleet to it,
runs the loads and stops it. The same clients, writer and loads run
against the real bridge (``real``), the raw floor (``floor``) and the naive
approach (``naive``); figures are compared in `bench.records`.

* main session (real, floor): P1 per-user latency, P2 capacity ramp, P3
  fan-out burst, and (real only, no clients) P6 capture cost; the real
  bridge's runs once per capture (``real-wal``, ``real-triggers``: CAPTURE
  set in its environment), each on a fresh database with a writer of its own;
* naive session: P1 and P3 again, then the 5-second polling clients (P8);
* idle session (real, through the counting proxy): P4 memory, P5 hold
  with heartbeats (P7 idle queries counted meanwhile), the same write load
  as the polling comparison (P8, ours), then the P5 stretch;
* idle session (floor): P4 memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import psutil

from bench.clients import ClientFleet, Delivery, Health, OpenReport, SocketSpec
from bench.config import REPO, BenchConfig
from bench.database import BenchDatabase, host_port, via_port
from bench.limits import Placement, pin
from bench.pgproxy import CountingProxy, Snapshot
from bench.profiling import Profiler, summarise
from bench.report import percentile
from bench.servers import (
    BridgeServer,
    FloorServer,
    NaiveServer,
    ServerProcess,
    cpu_seconds,
    tree_cpu_seconds,
)
from bench.writer import InsertPlan, UpdatePlan, Writer, WriterResult

PROFILES = REPO / "bench" / "results"


def say(scope: str, message: str) -> None:
    print(f"[{scope}] {message}", flush=True)


# measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cpu:
    at: float
    server: float
    clients: float
    writer: float
    postgres: float | None
    machine: float  # CPU-seconds of every core not idle, machine-wide


@dataclass
class Run:
    """One write load against one server and what the clients saw."""

    kind: str
    written: WriterResult
    receivers: int
    delivery: Delivery
    latencies: list[float]
    cpu: dict[str, float | None]  # % of one core per side, machine % of all cores
    window: float
    sequencing: list[float] = field(default_factory=list)  # real: trigger → sequenced, ms
    closed_early: int = 0  # sockets the server closed (cumulative for the open sockets)
    closed_example: str | None = None
    queries: Snapshot | None = None  # what the bridge sent to Postgres (through the proxy)
    # real: the leader's own statements during the run and (triggers) its NOTIFY wake-ups,
    # from /api/stats ("wal" or "sequencer")
    leader: Leader | None = None
    # real: full GC passes and their seconds during the run, longest loop stall so far
    pauses: dict[str, float] | None = None

    @property
    def expected(self) -> int:
        return self.written.committed * self.receivers

    @property
    def distinct(self) -> int:
        return self.delivery.received - self.delivery.duplicates - self.delivery.unknown

    @property
    def lost(self) -> int:
        return self.expected - self.distinct

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float | None:
        return percentile(self.latencies, 0.99)

    @property
    def throughput(self) -> float | None:
        """Distinct frames delivered per second, writer start → last arrival."""
        last = self.delivery.last_arrival
        if last is None or last <= self.written.started:
            return None
        return self.distinct / (last - self.written.started)


@dataclass(frozen=True)
class Leader:
    """The capturing leader's statements (and trigger-path wake-ups), from /api/stats."""

    statements: int
    wake_ups: int | None  # NOTIFY wake-ups; None: the WAL leader (no wake-ups)
    busy_polls: int = 0  # trigger path: passes that found writers mid-transaction

    def minus(self, earlier: Leader) -> Leader:
        return self.plus(earlier, -1)

    def plus(self, other: Leader, sign: int = 1) -> Leader:
        wake_ups = (
            None
            if self.wake_ups is None or other.wake_ups is None
            else self.wake_ups + sign * other.wake_ups
        )
        return Leader(
            self.statements + sign * other.statements,
            wake_ups,
            self.busy_polls + sign * other.busy_polls,
        )


def leader_counts(server: ServerProcess) -> Leader | None:
    """The leader's counters now (None: not a bridge, or it has no outbox leader)."""
    if not isinstance(server, BridgeServer):
        return None
    stats = server.stats()
    wal = stats.get("wal")
    if isinstance(wal, dict) and "statements" in wal:
        return Leader(int(wal["statements"]), None)
    sequencer = stats.get("sequencer")
    if isinstance(sequencer, dict) and "statements" in sequencer:
        return Leader(
            int(sequencer["statements"]),
            int(sequencer.get("wake_ups", 0)),
            int(sequencer.get("busy_polls", 0)),
        )
    return None


def is_real(kind: str) -> bool:
    """The real bridge, whatever its capture ("real", "real-wal", "real-triggers")."""
    return kind == "real" or kind.startswith("real-")


def capture_of(kind: str) -> str | None:
    """The CAPTURE of a real kind ("real-wal" → "wal"; "real" → None, the default)."""
    return kind.split("-", 1)[1] if kind.startswith("real-") else None


@dataclass
class Step:
    rate: float
    run: Run
    passed: bool


@dataclass
class Idle:
    """P4 / P5 / P7 of one server."""

    kind: str
    target: int
    opened: OpenReport | None = None
    rss0: int = 0
    rss_n: int = 0
    held: Health | None = None
    hold_seconds: float = 0.0
    queries: Snapshot | None = None
    stretch_open: int | None = None
    stretch_errors: list[str] = field(default_factory=list)
    stretch_health: Health | None = None
    server_alive_after: bool = True

    @property
    def bytes_per_connection(self) -> float | None:
        connected = self.opened.connected if self.opened else 0
        if not connected:
            return None
        return (self.rss_n - self.rss0) / connected


@dataclass
class Polling:
    clients: int
    requests: int
    window: float
    queries: int  # the poll SELECTs
    statements: Snapshot  # everything the naive server sent to Postgres
    run: Run
    errors: list[str]
    reconnects: int


@dataclass
class Results:
    p1: dict[str, list[Run]] = field(default_factory=dict)
    p2: dict[str, list[Step]] = field(default_factory=dict)
    p3: dict[str, list[Run]] = field(default_factory=dict)
    # "real-wal:plain-1" → rows/s per run
    p6: dict[str, list[float]] = field(default_factory=dict)
    # "real-wal:tracked-100" → the leader's counters over the captured runs, rows captured
    p6_leader: dict[str, tuple[Leader, int]] = field(default_factory=dict)
    idle: dict[str, Idle] = field(default_factory=dict)
    ours_under_poll_load: tuple[Run, Snapshot, float] | None = None  # run, statements, window
    polling: Polling | None = None
    connect: dict[str, OpenReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    p9: list[Any] = field(default_factory=list)  # bench.cluster.Layout, one per layout


@dataclass
class Environment:
    ctx: SpawnContext
    config: BenchConfig
    db: BenchDatabase
    workdir: Path
    place: Placement
    fleet: ClientFleet
    writer: Writer
    results: Results
    next_marker: int = 0
    proxy: CountingProxy | None = None  # the bridge's database traffic goes through it

    def base(self, count: int) -> int:
        base = self.next_marker
        self.next_marker += count + 1000
        return base


def _machine_busy() -> float:
    times = psutil.cpu_times()
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return float(sum(times)) - idle


def _cpu(env: Environment, server: ServerProcess) -> Cpu:
    postgres = env.db.postmaster()
    writer = psutil.Process(env.writer.pid) if env.writer.pid else None
    return Cpu(
        at=time.time(),
        server=server.cpu_seconds(),
        clients=sum(cpu_seconds(psutil.Process(pid)) for pid in env.fleet.pids),
        writer=cpu_seconds(writer) if writer is not None else 0.0,
        postgres=tree_cpu_seconds(postgres) if postgres is not None else None,
        machine=_machine_busy(),
    )


def _cpu_share(before: Cpu, after: Cpu) -> tuple[dict[str, float | None], float]:
    window = max(after.at - before.at, 1e-9)

    def share(a: float | None, b: float | None) -> float | None:
        # Clamped: a process tree that lost a child (a closed Postgres backend) can shrink.
        return None if a is None or b is None else max(b - a, 0.0) / window * 100

    sides: dict[str, float | None] = {
        "server": share(before.server, after.server),
        "clients": share(before.clients, after.clients),
        "writer": share(before.writer, after.writer),
        "postgres": share(before.postgres, after.postgres),
        "machine": share(before.machine, after.machine),
    }
    ours = sum(v or 0.0 for k, v in sides.items() if k != "machine")
    machine = sides["machine"]
    # CPU used by processes that are not part of the benchmark (other work on the box).
    sides["others"] = None if machine is None else max(machine - ours, 0.0)
    return sides, window


def _drain(fleet: ClientFleet, expected: int, idle: float, limit: float) -> int:
    """Wait until `expected` frames arrived, nothing arrived for `idle` s, or `limit` s passed."""
    started = last_change = time.monotonic()
    last = -1
    while True:
        count = fleet.received()
        now = time.monotonic()
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, now
        elif now - last_change >= idle or now - started >= limit:
            return count
        time.sleep(0.05)


def run_load(
    env: Environment,
    server: ServerProcess,
    plan: UpdatePlan,
    receivers: int,
    *,
    kind: str,
    profile: str | None = None,
) -> Run:
    """One write load; wait for the frames; compute what the clients saw."""
    profiler: Profiler | None = None
    if profile is not None:
        profiler = Profiler(server.pid, PROFILES / f"profile-{profile}.txt")
        profiler.start()
    outbox_before = env.db.outbox_head() if is_real(kind) else None
    proxy = env.proxy if is_real(kind) else None
    queries_before = proxy.snapshot() if proxy is not None else None
    leader_before = leader_counts(server)
    pauses_before = server.pauses() if isinstance(server, BridgeServer) else None
    before = _cpu(env, server)
    env.writer.start_update(plan)
    written = env.writer.wait_update(plan)
    if written.errors:
        say(kind, f"writer errors: {'; '.join(written.errors)}")
    expected = written.committed * receivers
    backlog_limit = max(plan.duration * 3, expected / 5000) + 30
    _drain(env.fleet, expected, idle=env.config.drain_idle, limit=backlog_limit)
    after = _cpu(env, server)
    leader_after = leader_counts(server)
    pauses = _pauses(pauses_before, server.pauses()) if isinstance(server, BridgeServer) else None
    queries = (
        proxy.snapshot().minus(queries_before)
        if proxy is not None and queries_before is not None
        else None
    )
    health = env.fleet.health()
    if profiler is not None:
        profiler.stop()
        if profiler.error:
            env.results.problems.append(f"profile {profile}: {profiler.error}")
        else:
            env.results.profiles[profile or ""] = summarise(profiler.output)
    delivery = env.fleet.results(plan.base, written.commit_times, plan.users)
    cpu, window = _cpu_share(before, after)
    sequencing = env.db.sequencing_delays_ms(outbox_before) if outbox_before is not None else []
    return Run(
        kind=kind,
        written=written,
        receivers=receivers,
        delivery=delivery,
        latencies=sorted(delivery.latencies_ms),
        cpu=cpu,
        window=window,
        sequencing=sequencing,
        closed_early=health.closed_early,
        closed_example=health.closed_examples[0] if health.closed_examples else None,
        queries=queries,
        pauses=pauses,
        leader=leader_after.minus(leader_before)
        if leader_after is not None and leader_before is not None
        else None,
    )


def _pauses(before: dict[str, float] | None, after: dict[str, float]) -> dict[str, float] | None:
    if not before or not after:
        return None
    passes = "realtime_bridge_gc_collections_total"
    seconds = "realtime_bridge_gc_pause_seconds_sum"
    return {
        "gc2_passes": after.get(passes, 0) - before.get(passes, 0),
        "gc2_seconds": after.get(seconds, 0) - before.get(seconds, 0),
        "gc2_max_s": after.get("realtime_bridge_gc_pause_max_seconds", 0),
        "stall_max_s": after.get("realtime_bridge_loop_stall_max_seconds", 0),
    }


def _describe(run: Run) -> str:
    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    rate = run.throughput
    return (
        f"{run.written.committed:,} changes at {run.written.rate:,.0f}/s → "
        f"{run.distinct:,}/{run.expected:,} frames, lost {run.lost:,}"
        + (
            f" ({run.closed_early:,} sockets closed: {run.closed_example})"
            if run.closed_early
            else ""
        )
        + f", p50 {ms(run.p50)} ms, "
        f"p99 {ms(run.p99)} ms, {rate or 0:,.0f} frames/s; CPU server "
        f"{run.cpu['server'] or 0:.0f}%, clients {run.cpu['clients'] or 0:.0f}%, "
        f"postgres {run.cpu['postgres'] or 0:.0f}%, others {run.cpu['others'] or 0:.0f}%"
        + (
            f"; trigger → sequenced p50 {ms(percentile(run.sequencing, 0.5))} ms"
            if run.sequencing
            else ""
        )
        + (
            f"; {run.queries.statements / max(run.written.committed, 1):.1f} statements/change"
            if run.queries is not None
            else ""
        )
        + (
            f"; leader {run.leader.statements / max(run.written.committed, 1):.3f} "
            "statements/change"
            + (
                f" ({run.leader.wake_ups:,} NOTIFY wake-ups, {run.leader.busy_polls:,} busy polls)"
                if run.leader.wake_ups is not None
                else ""
            )
            if run.leader is not None
            else ""
        )
        + (
            f"; full GC passes {run.pauses['gc2_passes']:.0f} "
            f"({run.pauses['gc2_seconds'] * 1000:.0f} ms), longest so far: GC "
            f"{run.pauses['gc2_max_s'] * 1000:.0f} ms, loop stall "
            f"{run.pauses['stall_max_s'] * 1000:.0f} ms"
            if run.pauses is not None
            else ""
        )
    )


# socket specs ---------------------------------------------------------------------------


def per_user_specs(server: ServerProcess, users: range) -> list[SocketSpec]:
    if isinstance(server, BridgeServer):
        # A signed-in browser: its own `authenticated` token, its own rows.
        return [SocketSpec(f"apikey={server.user_token(u)}", u) for u in users]
    return [SocketSpec("", u) for u in users]


def table_specs(server: ServerProcess, count: int) -> list[SocketSpec]:
    query = f"apikey={server.service_key}" if isinstance(server, BridgeServer) else ""
    return [SocketSpec(query, None)] * count


def _open(env: Environment, server: ServerProcess, specs: list[SocketSpec], label: str) -> bool:
    profiler: Profiler | None = None
    if env.config.profile and label == "real per-user":
        profiler = Profiler(server.pid, PROFILES / "profile-connect.txt")
        profiler.start()
    report = env.fleet.open(server.ws_url, specs)
    if profiler is not None:
        profiler.stop()
        if profiler.error:
            env.results.problems.append(f"profile connect: {profiler.error}")
        else:
            env.results.profiles["connect"] = summarise(profiler.output)
    env.results.connect[label] = report
    say(
        label,
        f"{report.connected:,} of {len(specs):,} sockets connected and subscribed in "
        f"{report.seconds:.1f} s",
    )
    if report.failed:
        problem = f"{label}: {report.failed} of {len(specs)} sockets failed: " + "; ".join(
            report.errors[:3]
        )
        env.results.problems.append(problem)
        say(label, problem)
        return False
    return True


# sessions -------------------------------------------------------------------------------


def _server(env: Environment, kind: str, dsn: str | None = None) -> ServerProcess:
    log = env.workdir / f"{kind}-{time.monotonic_ns()}.log"
    cpus = env.place.server
    if is_real(kind):
        return BridgeServer(dsn or env.db.dsn, log, cpus, capture_of(kind))
    if kind == "floor":
        return FloorServer(dsn or env.db.dsn, log, cpus)
    raise ValueError(kind)


def capture_session(env: Environment, capture: str) -> None:
    """The real bridge's main session with CAPTURE=`capture`, on a fresh database.

    A database of its own (same server): neither capture inherits the other's
    outbox, slot or triggers; the writer's connections go to it as well.
    """
    label = f"real-{capture}"
    with env.db.sibling(label) as db:
        db.seed(max(env.config.clients, *env.config.fanout_clients, 1))
        with Writer(env.ctx, db.dsn, env.config.writer_connections, env.place.load) as writer:
            main_db, main_writer = env.db, env.writer
            env.db, env.writer = db, writer
            try:
                main_session(env, label)
            finally:
                env.db, env.writer = main_db, main_writer


def main_session(env: Environment, kind: str) -> None:
    """P1, P2, P3 (and P6 for the real bridge) against one server."""
    if is_real(kind) and env.config.count_queries:
        # Diagnostic: the bridge's database traffic through the counting proxy
        # (one more hop on every round trip, so latencies grow a little).
        with CountingProxy(env.ctx, host_port(env.db.dsn), env.place.load) as proxy:
            env.proxy = proxy
            try:
                _main_session(env, kind, via_port(env.db.dsn, proxy.port))
            finally:
                env.proxy = None
        return
    _main_session(env, kind, None)


def _main_session(env: Environment, kind: str, dsn: str | None) -> None:
    config = env.config
    with _server(env, kind, dsn) as server:
        say(kind, f"{server.name} up on port {server.port} (pid {server.pid})")
        if config.wants("P1", "P2"):
            per_user(env, server, kind, ramp=config.wants("P2"), p1=config.wants("P1"))
        if config.wants("P3"):
            fan_out(env, server, kind)
        if is_real(kind) and config.wants("P6"):
            capture_cost(env, server, kind)
        if isinstance(server, BridgeServer):
            stats = server.stats()
            slow = (stats.get("dropped") or {}).get("slow_consumers")
            if slow:
                env.results.problems.append(f"{kind}: {slow} slow-consumer cut-offs")


def per_user(
    env: Environment, server: ServerProcess, kind: str, *, ramp: bool, p1: bool = True
) -> None:
    config = env.config
    n = config.clients
    if not _open(env, server, per_user_specs(server, range(n)), f"{kind} per-user"):
        env.fleet.close_sockets()
        return
    time.sleep(0.5)
    if p1:
        for rep in range(config.reps):
            plan = UpdatePlan(
                target="real" if is_real(kind) else "floor",
                base=env.base(int(config.p1_rate * config.p1_duration)),
                users=n,
                rate=config.p1_rate,
                duration=config.p1_duration,
                max_events=int(config.p1_rate * config.p1_duration),
                connections=config.writer_connections,
            )
            profile = f"P1-{kind}" if config.profile and is_real(kind) and rep == 0 else None
            run = run_load(env, server, plan, 1, kind=kind, profile=profile)
            env.results.p1.setdefault(kind, []).append(run)
            say(f"{kind} P1 #{rep + 1}", _describe(run))
    if ramp and kind != "naive":
        _ramp(env, server, kind, kind, config.p2_rates, rows=1)
        # Single-row writers run out of commits on 2 cores long before the
        # bridge runs out of room: the same ramp again, many rows a statement.
        rows = config.p2_multi_rows
        _ramp(env, server, kind, f"{kind} ×{rows} rows", config.p2_multi_rates, rows=rows)
    env.fleet.close_sockets()


def _ramp(
    env: Environment,
    server: ServerProcess,
    kind: str,
    label: str,
    rates: tuple[float, ...],
    *,
    rows: int,
) -> None:
    """P2: step the change rate up until p99 passes 100 ms (or the writer falls short)."""
    config = env.config
    steps = env.results.p2.setdefault(label, [])
    for rate in rates:
        count = int(rate * config.p2_step)
        plan = UpdatePlan(
            target="real" if is_real(kind) else "floor",
            base=env.base(count),
            users=config.clients,
            rate=rate,
            duration=config.p2_step,
            max_events=count,
            connections=config.writer_connections,
            rows=rows,
        )
        run = run_load(env, server, plan, 1, kind=kind)
        passed = (
            run.p99 is not None
            and run.p99 <= 100.0
            and run.lost == 0
            and run.written.rate >= 0.95 * rate
        )
        steps.append(Step(rate, run, passed))
        say(f"{label} P2 @{rate:,.0f}/s", ("pass: " if passed else "FAIL: ") + _describe(run))
        if not passed:
            break
        time.sleep(0.5)


def fan_out(env: Environment, server: ServerProcess, kind: str) -> None:
    """P3 at each of `fanout_clients` (the naive approach: the first only)."""
    sizes = env.config.fanout_clients
    for index, n in enumerate(sizes[:1] if kind == "naive" else sizes):
        _fan_out(env, server, kind, n, p3_key(kind, n) if index else kind)


def p3_key(kind: str, clients: int) -> str:
    """Where P3 runs at a further socket count are kept (`real-wal@5000`, `floor@5000`)."""
    return f"{kind}@{clients}"


def _fan_out(env: Environment, server: ServerProcess, kind: str, n: int, key: str) -> None:
    config = env.config
    if not _open(env, server, table_specs(server, n), f"{kind} fan-out {n:,}"):
        env.fleet.close_sockets()
        return
    time.sleep(0.5)
    for rep in range(config.reps):
        plan = UpdatePlan(
            target="real" if is_real(kind) else "floor",
            base=env.base(config.p3_events),
            users=n,
            rate=0,
            duration=60,
            max_events=config.p3_events,
            connections=config.writer_connections,
        )
        profile = f"P3-{kind}" if config.profile and is_real(kind) and rep == 0 else None
        run = run_load(env, server, plan, n, kind=kind, profile=profile)
        env.results.p3.setdefault(key, []).append(run)
        say(f"{kind} P3 {n:,} #{rep + 1}", _describe(run))
        time.sleep(0.5)
    env.fleet.close_sockets()


def capture_cost(env: Environment, server: ServerProcess, kind: str) -> None:
    """P6: INSERT throughput into a plain and a captured table (the bridge is running)."""
    config = env.config
    connections = min(8, config.writer_connections)
    for rows in (1, 100):
        for rep in range(config.reps):
            # Alternate the order so neither table always goes first.
            order = ("plain", "tracked") if rep % 2 == 0 else ("tracked", "plain")
            for table in order:
                # Each run starts with the bridge idle (not catching up on the last one).
                env.db.wait_settled(limit=30)
                before = leader_counts(server) if table == "tracked" else None
                profiler: Profiler | None = None
                if config.profile and table == "tracked" and rep == 0:
                    profiler = Profiler(server.pid, PROFILES / f"profile-P6-{kind}-{rows}.txt")
                    profiler.start()
                cpu_before = _cpu(env, server)
                result = env.writer.insert(
                    InsertPlan(f"bench.capture_{table}", rows, config.p6_duration, connections)
                )
                cpu, _window = _cpu_share(cpu_before, _cpu(env, server))
                if profiler is not None:
                    profiler.stop()
                    if profiler.error:
                        env.results.problems.append(f"profile P6: {profiler.error}")
                    else:
                        env.results.profiles[f"P6-{kind}-{rows}"] = summarise(profiler.output)
                if before is not None:
                    _p6_leader(env, server, f"{kind}:{table}-{rows}", before, result.rows)
                if result.errors:
                    env.results.problems.append(
                        f"P6 {kind} {table}: {'; '.join(result.errors[:2])}"
                    )
                env.results.p6.setdefault(f"{kind}:{table}-{rows}", []).append(
                    result.rows_per_second
                )
                say(
                    f"{kind} P6 {table} ×{rows}",
                    f"{result.rows:,} rows in {result.seconds:.1f} s = "
                    f"{result.rows_per_second:,.0f} rows/s; CPU % "
                    + " ".join(f"{side} {share:.0f}" for side, share in cpu.items() if share),
                )
                time.sleep(0.3)


def _p6_leader(
    env: Environment, server: ServerProcess, key: str, before: Leader, rows: int
) -> None:
    """Add the leader's statements for `rows` captured rows, once it has caught up."""
    env.db.wait_settled(limit=30)
    after = leader_counts(server)
    if after is None:
        return
    spent = after.minus(before)
    known = env.results.p6_leader.get(key)
    env.results.p6_leader[key] = (
        (spent, rows) if known is None else (known[0].plus(spent), known[1] + rows)
    )


def naive_session(env: Environment) -> None:
    """The naive approach: P1 and P3 through the send_json loop, then the polling clients."""
    config = env.config
    with CountingProxy(env.ctx, host_port(env.db.dsn), env.place.load) as proxy:
        server = NaiveServer(
            env.db.dsn,
            via_port(env.db.dsn, proxy.port),
            env.workdir / "naive.log",
            env.place.server,
        )
        with server:
            say("naive", f"naive server up on port {server.port} (pid {server.pid})")
            if config.wants("P1", "P8"):
                per_user(env, server, "naive", ramp=False)
            if config.wants("P3", "P8"):
                fan_out(env, server, "naive")
            if config.wants("P8"):
                polling(env, server, proxy)


def polling(env: Environment, server: NaiveServer, proxy: CountingProxy) -> None:
    config = env.config
    users = list(range(config.poll_clients))
    report = env.fleet.poll_start(server.poll_url, users, config.poll_interval)
    say("naive polling", f"{report.connected:,} polling clients every {config.poll_interval:g} s")
    if report.failed:
        env.results.problems.append(f"polling: {report.failed} clients could not connect")
    time.sleep(1.0)
    before = proxy.snapshot()
    started = time.monotonic()
    count = int(config.poll_rate * config.poll_duration)
    plan = UpdatePlan(
        target="floor",
        base=env.base(count),
        users=len(users),
        rate=config.poll_rate,
        duration=config.poll_duration,
        max_events=count,
        connections=4,
    )
    cpu_before = _cpu(env, server)
    env.writer.start_update(plan)
    written = env.writer.wait_update(plan)
    time.sleep(config.poll_interval + 0.5)  # the last changes get polled
    after = proxy.snapshot()
    window = time.monotonic() - started
    cpu_after = _cpu(env, server)
    requests, reconnects, errors = env.fleet.poll_stop()
    if errors:
        env.results.problems.append(f"polling: {'; '.join(errors[:3])}")
    delivery = env.fleet.results(plan.base, written.commit_times, len(users), polling=True)
    cpu, cpu_window = _cpu_share(cpu_before, cpu_after)
    run = Run("naive", written, 1, delivery, sorted(delivery.latencies_ms), cpu, cpu_window)
    sent = after.minus(before)
    env.results.polling = Polling(
        clients=report.connected,
        requests=requests,
        window=window,
        queries=sum(n for text, n in sent.by_text.items() if "bench.floor_positions" in text),
        statements=sent,
        run=run,
        errors=errors,
        reconnects=reconnects,
    )
    say(
        "naive polling",
        f"{after.minus(before).statements:,} statements in {window:.1f} s; " + _describe(run),
    )


def idle_session(env: Environment, kind: str) -> None:
    """P4 memory; for the bridge also P5 hold (+ P7 idle queries), P8 ours, P5 stretch."""
    config = env.config
    n = config.idle_clients if config.wants("P4", "P5", "P7") else config.poll_clients
    idle = Idle(kind, n)
    env.results.idle[kind] = idle
    if kind == "floor":
        with _server(env, "floor") as server:
            _idle_memory(env, server, idle, n)
            env.fleet.close_sockets()
        return
    with CountingProxy(env.ctx, host_port(env.db.dsn), env.place.load) as proxy:
        bridge = _server(env, "real", via_port(env.db.dsn, proxy.port))
        assert isinstance(bridge, BridgeServer)
        env.proxy = proxy
        with bridge:
            say("real idle", f"bridge up on port {bridge.port} (pid {bridge.pid}), via proxy")
            if not _idle_memory(env, bridge, idle, n):
                env.fleet.close_sockets()
                return
            if config.wants("P5", "P7") and config.hold > 0:
                _hold(env, bridge, proxy, idle)
            if config.wants("P8"):
                _ours_under_poll_load(env, bridge, proxy)
            if config.wants("P5") and config.stretch > n:
                _stretch(env, bridge, idle, n)
            idle.server_alive_after = bridge.alive()
        env.proxy = None
        env.fleet.close_sockets()


def _idle_memory(env: Environment, server: ServerProcess, idle: Idle, n: int) -> bool:
    time.sleep(1.0)
    idle.rss0 = server.rss_bytes()
    specs = per_user_specs(server, range(n))
    idle.opened = env.fleet.open(server.ws_url, specs)
    env.results.connect[f"{idle.kind} idle"] = idle.opened
    say(
        f"{idle.kind} idle",
        f"{idle.opened.connected:,} of {n:,} sockets connected and subscribed in "
        f"{idle.opened.seconds:.1f} s",
    )
    if idle.opened.failed:
        env.results.problems.append(
            f"{idle.kind} idle: {idle.opened.failed} of {n} sockets failed: "
            + "; ".join(idle.opened.errors[:3])
        )
    time.sleep(2.0)
    idle.rss_n = server.rss_bytes()
    say(
        f"{idle.kind} P4",
        f"RSS {idle.rss0 / 2**20:.1f} MiB at 0 → {idle.rss_n / 2**20:.1f} MiB at "
        f"{idle.opened.connected:,}: {(idle.bytes_per_connection or 0) / 1024:.1f} KiB each",
    )
    return idle.opened.connected > 0


def _hold(env: Environment, bridge: BridgeServer, proxy: CountingProxy, idle: Idle) -> None:
    config = env.config
    env.fleet.heartbeat(config.heartbeat)
    say(
        "real P5",
        f"holding {idle.opened.connected if idle.opened else 0:,} sockets for "
        f"{config.hold:g} s, each pinging every {config.heartbeat:g} s",
    )
    before = proxy.snapshot()
    started = time.monotonic()
    deadline = started + config.hold
    while time.monotonic() < deadline:
        time.sleep(min(30.0, max(deadline - time.monotonic(), 0)))
        health = env.fleet.health()
        say(
            "real P5",
            f"{time.monotonic() - started:4.0f} s: {health.open:,} open, "
            f"{health.closed_early} closed early, {health.pongs:,}/{health.pings_sent:,} pongs",
        )
    after = proxy.snapshot()
    idle.hold_seconds = time.monotonic() - started
    idle.queries = after.minus(before)
    env.fleet.heartbeat(0)
    time.sleep(1.0)  # the last pongs
    idle.held = env.fleet.health()


def _ours_under_poll_load(env: Environment, bridge: BridgeServer, proxy: CountingProxy) -> None:
    config = env.config
    count = int(config.poll_rate * config.poll_duration)
    plan = UpdatePlan(
        target="real",
        base=env.base(count),
        users=config.poll_clients,
        rate=config.poll_rate,
        duration=config.poll_duration,
        max_events=count,
        connections=4,
    )
    before = proxy.snapshot()
    started = time.monotonic()
    run = run_load(env, bridge, plan, 1, kind="real")
    window = time.monotonic() - started
    sent = proxy.snapshot().minus(before)
    env.results.ours_under_poll_load = (run, sent, window)
    say("real P8", f"{sent.statements:,} statements in {window:.1f} s; " + _describe(run))


def _stretch(env: Environment, bridge: BridgeServer, idle: Idle, n: int) -> None:
    config = env.config
    chunk = 2500
    opened = n
    say("real P5 stretch", f"adding sockets up to {config.stretch:,}")
    while opened < config.stretch:
        size = min(chunk, config.stretch - opened)
        report = env.fleet.open(bridge.ws_url, per_user_specs(bridge, range(opened, opened + size)))
        opened += report.connected
        say("real P5 stretch", f"+{report.connected:,} ({report.failed} failed): {opened:,} open")
        if report.failed or not bridge.alive():
            idle.stretch_errors = report.errors[:3]
            break
    time.sleep(10.0)
    idle.stretch_health = env.fleet.health()
    idle.stretch_open = idle.stretch_health.open
    say(
        "real P5 stretch",
        f"after 10 s: {idle.stretch_health.open:,} open, "
        f"{idle.stretch_health.closed_early} closed early",
    )


def pg_seed_users(config: BenchConfig) -> int:
    return max(config.clients, config.idle_clients, config.stretch, config.poll_clients)


def pin_postgres(env: Environment) -> None:
    postmaster = env.db.postmaster()
    if postmaster is not None and env.place.load:
        pin(postmaster.pid, env.place.load, children=True)


def fd_note() -> str:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"{soft:,} soft / {hard:,} hard"


def profiles_text(results: Results) -> list[str]:
    lines: list[str] = []
    for name, summary in results.profiles.items():
        lines.append(
            f"py-spy profile of the bridge during {name} (real): bench/results/profile-{name}.txt"
        )
        lines += [f"  {line}" for line in summary]
    return lines
