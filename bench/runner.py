"""`python -m bench`: set up Postgres, run the sessions, print and save the figures."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import psutil

from bench.clients import ClientFleet, spawn_context
from bench.config import BenchConfig, parse_args
from bench.database import BenchDatabase
from bench.limits import event_loop_factory, placement, raise_fd_limit
from bench.records import build
from bench.report import Record, detail, machine_records, render_details, render_main, write_json
from bench.scenarios import (
    Environment,
    Results,
    capture_session,
    fd_note,
    idle_session,
    main_session,
    naive_session,
    pg_seed_users,
    pin_postgres,
    profiles_text,
)
from bench.writer import Writer


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `with` block cleans up.
    raise KeyboardInterrupt


def _describe(config: BenchConfig) -> str:
    return (
        f"realtime-bridge benchmark ({config.label}; {', '.join(config.scenarios)}): "
        f"P1-P3 {config.clients:,} clients, P1 {config.p1_rate:g} UPDATE/s × "
        f"{config.p1_duration:g} s, P2 ramp {'/'.join(f'{r:g}' for r in config.p2_rates)} "
        f"× {config.p2_step:g} s, P3 bursts of {config.p3_events} changes; P4/P5 "
        f"{config.idle_clients:,} idle clients held {config.hold:g} s"
        + (f", stretch to {config.stretch:,}" if config.stretch else "")
        + f"; captures {', '.join(config.captures)}"
        + f"; {config.reps} repetition(s); {config.client_processes} client processes"
    )


def _busy_percent(seconds: float = 2.0) -> float:
    """Share of the whole machine busy over `seconds` (all processes, ours are idle now)."""
    return float(psutil.cpu_percent(interval=seconds))


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` s for the machine to be < 25% busy; return the last reading."""
    deadline = time.monotonic() + limit
    busy = _busy_percent()
    while busy >= 25 and time.monotonic() < deadline:
        print(f"waiting for a quieter machine ({busy:.0f}% busy) …", flush=True)
        time.sleep(5)
        busy = _busy_percent()
    return busy


def run(config: BenchConfig, results: Results) -> list[Record]:
    records: list[Record] = []
    ctx = spawn_context()
    place = placement(config.pin)
    database_url = os.environ.get("DATABASE_URL") or None
    with tempfile.TemporaryDirectory(prefix="rb-bench-") as tmp:
        workdir = Path(tmp)
        where = "DATABASE_URL" if database_url else "an embedded Postgres"
        print(f"setting up {where} …", flush=True)
        with BenchDatabase(workdir, database_url) as db:
            db.seed(pg_seed_users(config))
            records += machine_records(db.version(), db.kind)
            busy = wait_quiet(config.wait_quiet) if config.wait_quiet > 0 else _busy_percent()
            records += [
                detail("run", "machine busy before start (other processes)", busy, "%"),
                detail("run", "mode", config.label, ""),
                detail("run", "started", datetime.now(UTC).isoformat(timespec="seconds"), "UTC"),
                detail("run", "CPU placement", place.describe, ""),
                detail(
                    "run",
                    "client event loop",
                    "uvloop" if event_loop_factory() is not None else "asyncio",
                    "",
                ),
                detail(
                    "run",
                    "synchronous_commit / fsync",
                    f"{db.setting('synchronous_commit')} / {db.setting('fsync')}",
                    "",
                ),
            ]
            for record in records:
                print(f"  {record.metric}: {record.value}", flush=True)
            with (
                ClientFleet(ctx, config.client_processes, place.load) as fleet,
                Writer(ctx, db.dsn, config.writer_connections, place.load) as writer,
            ):
                env = Environment(
                    ctx=ctx,
                    config=config,
                    db=db,
                    workdir=workdir,
                    place=place,
                    fleet=fleet,
                    writer=writer,
                    results=results,
                )
                pin_postgres(env)
                steps: list[tuple[str, Callable[[], None]]] = []
                if config.wants("P1", "P2", "P3", "P6"):
                    for capture in config.captures:
                        steps.append(
                            (
                                f"real-{capture}",
                                lambda capture=capture: capture_session(env, capture),  # type: ignore[misc]
                            )
                        )
                if config.wants("P1", "P2", "P3", "P8"):
                    steps.append(("floor", lambda: main_session(env, "floor")))
                if config.wants("P8"):
                    steps.append(("naive", lambda: naive_session(env)))
                if config.wants("P4", "P5", "P7", "P8"):
                    steps.append(("real idle", lambda: idle_session(env, "real")))
                if config.wants("P4"):
                    steps.append(("floor idle", lambda: idle_session(env, "floor")))
                if config.wants("P9"):
                    from bench.cluster import cluster_session

                    steps.append(("P9 cluster", lambda: results.p9.extend(cluster_session(env))))
                for name, step in steps:
                    started = time.monotonic()
                    try:
                        step()
                    except (RuntimeError, OSError) as exc:
                        # Report how far it got instead of losing the whole run.
                        results.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                        print(f"[{name}] failed: {exc}", flush=True)
                        with contextlib.suppress(RuntimeError, OSError):
                            fleet.restart()
                    records.append(
                        detail("run", f"{name} session", time.monotonic() - started, "s")
                    )
    records += build(results, config, fd_note())
    return records


NOTES = """\
"not ours": CPU the machine spent outside the benchmark's processes during the window
  (other work on the box); when it is large, every figure is disturbed.
real-wal / real-triggers: the real bridge with CAPTURE=wal / triggers, each on a fresh
  database (same server, same clients); "leader statements/change": statements the
  capturing leader sent (/api/stats "wal" or "sequencer"; the WAL replication stream is
  not a statement), divided by the changes committed; per wake-up on the trigger path.
latency: client receive time − the writer's time.time() right after its COMMIT returned
  (same machine, same clock). floor: trigger + pg_notify (a small ready-made frame) →
  asyncpg LISTEN → bare `websockets` broadcast, same clients, same writer, same run.
lost: frames expected (committed changes × receivers) − distinct frames received.
P1/P2/P4/P5 clients of the bridge sign in with their own `authenticated` token (row scope);
  P3 clients use the service key on the `public.positions` table channel.
P3 events/s: distinct frames ÷ (last arrival − writer start) for a burst of changes.
P4: (server RSS with N idle subscribed sockets − RSS with none) ÷ N.
P6: rows/s over the same time by 8 connections, plain table vs captured table (bridge running).
P7 / P8 queries: Execute + Query messages the server sent, counted by a proxy in front of
  Postgres (the embedded server has no pg_stat_statements).
CPU: user+system seconds ÷ wall time of the measured window, per process tree.
P9: 1, 2, 3 `serve` instances behind HAProxy (round robin), one Redis, one counting proxy
  in front of Postgres for all of them; "stream": followers read the leader's changes from
  the Redis change stream, "log": CHANGE_STREAM=false, each follower reads the log itself.
  Statements/s: everything the instances sent during P1 (health checks included) ÷ window."""


def main(argv: Sequence[str] | None = None) -> None:
    # pgserver imports platformdirs, which warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs.*")
    config = parse_args(argv)
    raise_fd_limit()  # inherited by the servers and the client processes
    signal.signal(signal.SIGTERM, _terminate)
    print(_describe(config), flush=True)
    started = time.monotonic()
    results = Results()
    try:
        records = run(config, results)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
    records.append(detail("run", "total", time.monotonic() - started, "s"))
    print()
    print(render_main(records))
    print()
    print(render_details(records))
    print()
    print(NOTES)
    for line in profiles_text(results):
        print(line)
    for problem in results.problems:
        print(f"problem: {problem}")
    write_json(records, config.output)
    print(f"\nresults written to {config.output} ({time.monotonic() - started:.0f} s in all)")
