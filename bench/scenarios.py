"""The two loads, each against a freshly started bridge.

per-user: N sockets, each subscribed to `position-updates` filtered to its
own user; the writer updates the users' rows round-robin at a fixed rate,
so every change has exactly one receiver.

fan-out: N sockets, each subscribed to the unfiltered `public.positions`
table channel; the writer commits as fast as it can (up to a count), so
every change has N receivers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

import psutil

from bench.clients import ClientFleet, Delivery, SocketSpec
from bench.config import FAN_OUT, PER_USER, BenchConfig
from bench.database import BenchDatabase
from bench.report import Record, percentile
from bench.server import BridgeServer, cpu_seconds, tree_cpu_seconds
from bench.writer import Writer, WriterPlan, WriterResult


@dataclass(frozen=True)
class Environment:
    ctx: SpawnContext
    config: BenchConfig
    db: BenchDatabase
    workdir: Path


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    server: float
    clients: float
    postgres: float | None
    machine_busy: float  # CPU-seconds of every core not idle, machine-wide


def _machine_busy() -> float:
    times = psutil.cpu_times()
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return float(sum(times)) - idle


def _snapshot(server: BridgeServer, clients: list[Any], postgres: Any) -> CpuSnapshot:
    return CpuSnapshot(
        at=time.time(),
        server=server.cpu_seconds(),
        clients=sum(cpu_seconds(p) for p in clients),
        postgres=tree_cpu_seconds(postgres) if postgres is not None else None,
        machine_busy=_machine_busy(),
    )


def _say(scenario: str, message: str) -> None:
    print(f"[{scenario}] {message}", flush=True)


def run_per_user(env: Environment) -> list[Record]:
    n = env.config.clients
    specs = [
        SocketSpec(
            {"type": "subscribe", "channel": "position-updates", "filters": {"user_id": f"u{i}"}},
            owner=i,
        )
        for i in range(n)
    ]
    plan = WriterPlan(
        users=n,
        rate=env.config.rate,
        duration=env.config.duration,
        max_events=max(1, round(env.config.rate * env.config.duration)),
        connections=env.config.writer_connections,
    )
    return _run(env, PER_USER, specs, plan, receivers_per_change=1)


def run_fan_out(env: Environment) -> list[Record]:
    n = env.config.clients
    specs = [SocketSpec({"type": "subscribe", "table": "public.positions"}) for _ in range(n)]
    plan = WriterPlan(
        users=n,
        rate=env.config.fanout_rate,
        duration=env.config.duration,
        max_events=env.config.fanout_events,
        connections=env.config.writer_connections,
    )
    return _run(env, FAN_OUT, specs, plan, receivers_per_change=n)


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


def _run(
    env: Environment,
    name: str,
    specs: list[SocketSpec],
    plan: WriterPlan,
    receivers_per_change: int,
) -> list[Record]:
    config = env.config
    _say(name, "starting the bridge")
    with (
        BridgeServer(env.db.dsn, env.workdir / f"bridge-{name}.log") as server,
        ClientFleet(env.ctx, server.ws_url, specs, config.client_processes, plan.users) as fleet,
    ):
        ready = fleet.wait_ready(timeout=120 + 0.1 * len(specs))
        if ready.failed:
            raise RuntimeError(
                f"{ready.failed} of {len(specs)} clients could not subscribe: "
                + "; ".join(ready.errors)
                + "\n"
                + server.log_tail()
            )
        _say(
            name,
            f"{ready.connected} clients connected and subscribed in "
            f"{ready.connect_seconds:.1f} s over {fleet.count_processes} process(es)",
        )
        client_ps = [psutil.Process(pid) for pid in fleet.pids]
        postgres = env.db.postmaster()
        with Writer(env.ctx, env.db.dsn, plan) as writer:
            writer.wait_ready()
            outbox_before = env.db.outbox_head()
            time.sleep(0.5)  # let the subscriptions settle
            before = _snapshot(server, client_ps, postgres)
            writer.go()
            pace = f"{plan.rate:g}/s" if plan.rate > 0 else "as fast as it can"
            _say(name, f"writing ({pace}, up to {plan.max_events:,} changes)")
            written = writer.wait_done()
            if written.errors:
                _say(name, f"writer errors: {'; '.join(written.errors)}")
            expected = written.committed * receivers_per_change
            _say(
                name,
                f"writer done: {written.committed:,} changes in "
                f"{written.finished - written.started:.1f} s; waiting for {expected:,} frames",
            )
            _drain(fleet, expected, idle=config.drain_idle, limit=config.duration * 6 + 120)
            after = _snapshot(server, client_ps, postgres)
        delivery = fleet.results(written.commit_times)
        stats = server.stats()
        rss = server.rss_mb()
    sequencing = env.db.sequencing_delays_ms(outbox_before)
    return _records(
        name,
        config,
        ready.connected,
        ready.connect_seconds,
        written,
        expected,
        delivery,
        before,
        after,
        stats,
        rss,
        sequencing,
    )


def _records(
    name: str,
    config: BenchConfig,
    clients: int,
    connect_seconds: float,
    written: WriterResult,
    expected: int,
    delivery: Delivery,
    before: CpuSnapshot,
    after: CpuSnapshot,
    stats: dict[str, Any],
    rss_mb: float,
    sequencing_ms: list[float],
) -> list[Record]:
    latencies = sorted(delivery.latencies_ms)
    delivered = len(latencies)
    write_seconds = max(written.finished - written.started, 1e-9)
    window = max(after.at - before.at, 1e-9)
    span = delivery.last_arrival - written.started if delivery.last_arrival is not None else None
    commit_ms = sorted(written.commit_ms)
    records = [
        Record(name, "clients", clients, "sockets"),
        Record(name, "connect + subscribe", connect_seconds, "s"),
        Record(name, "changes committed", written.committed, "changes"),
        Record(name, "write rate", written.committed / write_seconds, "changes/s"),
        Record(name, "writer COMMIT p50", percentile(commit_ms, 0.50), "ms"),
        Record(name, "frames expected", expected, "frames"),
        Record(name, "frames received", delivered, "frames"),
        Record(name, "events lost", expected - delivered, "frames"),
        Record(name, "duplicates", delivery.duplicates, "frames"),
    ]
    if name == PER_USER:
        records.append(Record(name, "misrouted", delivery.misrouted, "frames"))
    records += [
        Record(name, "latency min", latencies[0] if latencies else None, "ms"),
        Record(name, "latency p50", percentile(latencies, 0.50), "ms"),
        Record(name, "latency p90", percentile(latencies, 0.90), "ms"),
        Record(name, "latency p99", percentile(latencies, 0.99), "ms"),
        Record(name, "latency max", latencies[-1] if latencies else None, "ms"),
        Record(name, "trigger → sequenced p50", percentile(sequencing_ms, 0.50), "ms"),
        Record(name, "trigger → sequenced p99", percentile(sequencing_ms, 0.99), "ms"),
        Record(
            name,
            "delivered events/s",
            delivered / span if span is not None and span > 0 else None,
            "frames/s",
        ),
        Record(name, "delivery time", span, "s"),
        Record(name, "measured window", window, "s"),
        Record(name, "server CPU", after.server - before.server, "s"),
        Record(
            name, "server CPU load", (after.server - before.server) / window * 100, "% of 1 core"
        ),
        Record(name, "client CPU", after.clients - before.clients, "s"),
        Record(
            name,
            "machine CPU busy",
            (after.machine_busy - before.machine_busy) / window * 100,
            f"% of {os.cpu_count() or 1} cores",
        ),
        Record(
            name,
            "postgres CPU",
            after.postgres - before.postgres
            if after.postgres is not None and before.postgres is not None
            else None,
            "s",
        ),
        Record(name, "server RSS", rss_mb, "MiB"),
        Record(name, "server frames out (live)", stats.get("events_out"), "frames"),
        Record(name, "server frames replayed", stats.get("events_replayed"), "frames"),
        Record(
            name,
            "slow-consumer cut-offs",
            (stats.get("dropped") or {}).get("slow_consumers"),
            "sockets",
        ),
        Record(name, "sockets closed early", len(delivery.closed_early), "sockets"),
        Record(name, "other frames", sum(delivery.other_frames.values()), "frames"),
    ]
    if delivery.other_frames:
        _say(name, f"non-db_change frames received: {delivery.other_frames}")
    if delivery.closed_early:
        _say(name, f"sockets closed early, e.g.: {delivery.closed_early[0]}")
    if delivery.unknown:
        _say(name, f"{delivery.unknown} frames carried a marker the writer never committed")
    return records
