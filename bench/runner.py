"""`python -m bench`: set up Postgres, run the loads, print and save the figures."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.clients import spawn_context
from bench.config import FAN_OUT, PER_USER, BenchConfig, parse_args
from bench.database import BenchDatabase
from bench.limits import raise_fd_limit
from bench.report import Record, machine_records, render_table, write_json
from bench.scenarios import Environment, run_fan_out, run_per_user


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `with` block cleans up.
    raise KeyboardInterrupt


def _describe(config: BenchConfig) -> str:
    fan_pace = f"{config.fanout_rate:g}/s" if config.fanout_rate > 0 else "unpaced"
    return (
        f"realtime-bridge benchmark ({config.label}): {config.clients} clients over "
        f"{config.client_processes} process(es); per-user {config.rate:g} UPDATE/s for "
        f"{config.duration:g} s; fan-out {fan_pace}, up to {config.fanout_events:,} changes "
        f"or {config.duration:g} s; writer on {config.writer_connections} connection(s)"
    )


def run(config: BenchConfig) -> list[Record]:
    records: list[Record] = []
    ctx = spawn_context()
    database_url = os.environ.get("DATABASE_URL") or None
    with tempfile.TemporaryDirectory(prefix="rb-bench-") as tmp:
        workdir = Path(tmp)
        where = "DATABASE_URL" if database_url else "an embedded Postgres"
        print(f"setting up {where} …", flush=True)
        with BenchDatabase(workdir, database_url) as db:
            db.seed_positions(config.clients)
            records += machine_records(db.version(), db.kind)
            records += [
                Record("run", "mode", config.label, ""),
                Record("run", "started", datetime.now(UTC).isoformat(timespec="seconds"), "UTC"),
            ]
            for record in records:
                print(f"  {record.metric}: {record.value}", flush=True)
            env = Environment(ctx=ctx, config=config, db=db, workdir=workdir)
            runners = {PER_USER: run_per_user, FAN_OUT: run_fan_out}
            for scenario in config.scenarios:
                records += runners[scenario](env)
    return records


NOTES = """\
latency: client receive time − the writer's time.time() right after its COMMIT returned
  (same machine, same clock); a change delivered before the writer process got its
  COMMIT reply shows as a small negative minimum.
trigger → sequenced: outbox.sequenced_at − created_at (the trigger's clock_timestamp,
  taken before COMMIT): how long the change waited to be numbered by the bridge.
events lost: frames expected (committed changes × receivers) − distinct frames received.
delivered events/s: frames received ÷ (last arrival − writer start).
CPU: user+system seconds over the measured window (writer start → last frame or give-up)."""


def _notes(records: Sequence[Record], unpaced: bool) -> list[str]:
    notes: list[str] = []
    for record in records:
        if (
            record.metric == "machine CPU busy"
            and isinstance(record.value, float)
            and record.value >= 90 * (os.cpu_count() or 1)
        ):
            notes.append(
                f"{record.scenario}: the machine's CPUs were saturated "
                f"({record.value:.0f}% busy); clients, writer and Postgres share them with the "
                "bridge, so its figures are a lower bound on what the bridge alone can do."
            )
        if record.metric == "write rate" and record.scenario == FAN_OUT and unpaced:
            notes.append(
                f"{FAN_OUT}: the writer was unpaced (see --fanout-rate), so its latency is "
                "mostly the backlog of a burst that the bridge delivers after the fact."
            )
    return notes


def main(argv: Sequence[str] | None = None) -> None:
    # pgserver imports platformdirs, which warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs.*")
    config = parse_args(argv)
    raise_fd_limit()  # inherited by the bridge and the client processes
    signal.signal(signal.SIGTERM, _terminate)
    print(_describe(config), flush=True)
    started = time.monotonic()
    try:
        records = run(config)
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
    print()
    print(render_table(records))
    print()
    print(NOTES)
    for note in _notes(records, unpaced=config.fanout_rate == 0):
        print(f"note: {note}")
    write_json(records, config.output)
    print(f"\nresults written to {config.output} ({time.monotonic() - started:.0f} s in all)")
