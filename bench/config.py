"""Command-line options and the scenarios' parameters (full and --quick)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

SCENARIOS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8")
# Run only when asked for (--scenario P9): 1, 2, 3 instances behind HAProxy (bench.cluster).
OPT_IN = ("P9",)
CAPTURES = ("wal", "triggers")


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    reps: int  # repetitions of P1, P3 and P6 runs (figures are their medians)
    clients: int  # P1 / P2 / P3 sockets
    p1_rate: float  # UPDATEs per second
    p1_duration: float  # seconds per P1 run
    p2_rates: tuple[float, ...]  # the P2 ramp
    p2_step: float  # seconds per P2 step
    p2_multi_rates: tuple[float, ...]  # the P2 ramp driven by multi-row statements
    p2_multi_rows: int  # rows per statement on that ramp
    p3_events: int  # changes in a P3 burst
    # P3 socket counts, each run against every server (the first: the plain P3 labels).
    fanout_clients: tuple[int, ...]
    idle_clients: int  # P4 / P5 sockets
    hold: float  # P5: seconds the idle sockets are held (P7 is measured meanwhile)
    stretch: int  # P5: how far to try beyond idle_clients (0: do not)
    heartbeat: float  # seconds between two pings of one socket
    p6_duration: float  # seconds per P6 run
    poll_clients: int  # P8 polling clients
    poll_interval: float  # seconds between two polls of one client
    poll_duration: float  # seconds the writer runs during the polling comparison
    poll_rate: float  # changes per second during the polling comparison
    client_processes: int
    writer_connections: int
    drain_idle: float  # give up waiting for frames after this long without one
    pin: bool
    profile: bool
    wait_quiet: float  # wait up to this long for the machine to be quiet before starting
    count_queries: bool  # diagnostic: the main session's bridge talks to Postgres via the proxy
    scenarios: tuple[str, ...]
    # The real bridge's main session (P1-P3, P6) runs once per capture, each on a
    # fresh database, labelled real-wal / real-triggers.
    captures: tuple[str, ...]
    output: Path

    @property
    def label(self) -> str:
        return "quick" if self.quick else "full"

    def wants(self, *names: str) -> bool:
        return any(name in self.scenarios for name in names)


def _scenarios(text: str) -> tuple[str, ...]:
    if text == "all":
        return SCENARIOS
    chosen = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    unknown = [s for s in chosen if s not in SCENARIOS + OPT_IN]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(unknown)}")
    return chosen


def _captures(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [c for c in chosen if c not in CAPTURES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown capture(s) {', '.join(unknown) or '(none)'}; choose from wal, triggers"
        )
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Measure the real path (trigger → outbox → bridge → WebSocket) against the raw "
            "floor (trigger + pg_notify → asyncpg → bare websockets) and the naive approach, "
            "in one run (embedded Postgres unless DATABASE_URL is set)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller N, shorter runs, 1 repetition (< 2 min)"
    )
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        default=SCENARIOS,
        help="comma-separated subset of P1..P9 (default all of P1..P8; P9, the 1/2/3-instance "
        "cluster behind HAProxy, only when named)",
    )
    parser.add_argument(
        "--capture",
        type=_captures,
        default=CAPTURES,
        help="comma-separated captures the real bridge's P1-P3/P6 session runs with, each on "
        "a fresh database, side by side in the report (default wal,triggers)",
    )
    parser.add_argument("--reps", type=int, help="repetitions of P1/P3/P6 (default 3; quick 1)")
    parser.add_argument("--clients", type=int, help="P1-P3 sockets (default 5000; quick 1000)")
    parser.add_argument(
        "--fanout-clients",
        help="comma-separated P3 socket counts, each against the floor in the same run "
        "(default: --clients; e.g. 1000,5000)",
    )
    parser.add_argument(
        "--idle-clients", type=int, help="P4/P5 sockets (default 10000; quick 2000)"
    )
    parser.add_argument("--hold", type=float, help="P5 hold in seconds (default 300; quick 10)")
    parser.add_argument(
        "--stretch", type=int, help="P5: try up to this many sockets (default 20000; quick 0)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="processes the client sockets are spread over (default 2)",
    )
    parser.add_argument(
        "--writer-connections",
        type=int,
        default=16,
        help="Postgres connections the writer commits on (default 16; P6 uses 8)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="give the server a CPU of its own and put clients, writer and Postgres on the "
        "others (default off: on 2 CPUs it starves Postgres, whose round trips are on the "
        "bridge's critical path; P1 p50 measured 5.4 ms pinned vs 2.5 ms not)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of the bridge during P1, P3 and P6 (bench/results/profile-*)",
    )
    parser.add_argument(
        "--count-queries",
        action="store_true",
        help="diagnostic: route the P1-P3 bridge's database traffic through the counting "
        "proxy and report statements per change and their round trips (adds a hop)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait (up to SECONDS) until other processes use < 25%% of the machine",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick

    def pick(value: object, full: object, short: object) -> object:
        return value if value is not None else (short if quick else full)

    reps = int(str(pick(args.reps, 3, 1)))
    clients = int(str(pick(args.clients, 5000, 1000)))
    idle_clients = int(str(pick(args.idle_clients, 10_000, 2000)))
    hold = float(str(pick(args.hold, 300.0, 10.0)))
    stretch = int(str(pick(args.stretch, 20_000, 0)))
    try:
        fanout = tuple(int(n) for n in (args.fanout_clients or str(clients)).split(","))
    except ValueError:
        parser.error(f"--fanout-clients must be counts separated by commas: {args.fanout_clients}")
    if reps < 1 or clients < 1 or idle_clients < 1 or min(fanout) < 1:
        parser.error("--reps, --clients, --fanout-clients and --idle-clients must be at least 1")
    if hold < 0 or stretch < 0:
        parser.error("--hold and --stretch must not be negative")
    if args.client_processes < 1 or args.writer_connections < 1:
        parser.error("--client-processes and --writer-connections must be at least 1")
    return BenchConfig(
        quick=quick,
        reps=reps,
        clients=clients,
        p1_rate=1000.0,
        p1_duration=3.0 if quick else 10.0,
        p2_rates=(500.0, 1500.0, 5000.0)
        if quick
        else (250.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 7500.0),
        p2_step=1.5 if quick else 4.0,
        p2_multi_rates=(5000.0, 10000.0, 20000.0)
        if quick
        else (5000.0, 10000.0, 20000.0, 30000.0, 40000.0),
        p2_multi_rows=20,
        p3_events=100,
        fanout_clients=fanout,
        idle_clients=idle_clients,
        hold=hold,
        stretch=stretch,
        heartbeat=5.0 if quick else 25.0,
        p6_duration=1.5 if quick else 5.0,
        poll_clients=1000,
        poll_interval=5.0,
        poll_duration=5.0 if quick else 30.0,
        poll_rate=100.0,
        client_processes=args.client_processes,
        writer_connections=args.writer_connections,
        drain_idle=10.0 if quick else 15.0,
        pin=args.pin,
        profile=args.profile,
        wait_quiet=args.wait_quiet,
        count_queries=args.count_queries,
        scenarios=args.scenario,
        captures=args.capture,
        output=args.output,
    )
