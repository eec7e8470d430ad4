"""Command-line options and the two loads' parameters."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

PER_USER = "per-user"
FAN_OUT = "fan-out"
SCENARIOS = (PER_USER, FAN_OUT)


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    clients: int
    rate: float
    duration: float
    fanout_events: int
    fanout_rate: float
    client_processes: int
    writer_connections: int
    drain_idle: float
    scenarios: tuple[str, ...]
    output: Path

    @property
    def label(self) -> str:
        return "quick" if self.quick else "default"


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Measure commit → WebSocket client latency and throughput over loopback "
            "(embedded Postgres unless DATABASE_URL is set)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller load (200 clients, 200/s, 5 s)"
    )
    parser.add_argument("--clients", type=int, help="WebSocket clients (default 1000; quick 200)")
    parser.add_argument(
        "--rate", type=float, help="per-user: UPDATEs per second (default 500; quick 200)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds the writer runs (default 10; quick 5)"
    )
    parser.add_argument(
        "--fanout-events",
        type=int,
        help="fan-out: stop the writer after this many changes (default 2000)",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        default=0.0,
        help="fan-out: pace the writer at this many changes/s (default 0 = as fast as it can)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="processes the WebSocket clients are spread over (default 2)",
    )
    parser.add_argument(
        "--writer-connections",
        type=int,
        default=4,
        help="Postgres connections the writer commits on concurrently (default 4)",
    )
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "all"],
        default="all",
        help="run one load only (default: both)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})"
    )
    args = parser.parse_args(argv)

    quick: bool = args.quick
    clients = args.clients if args.clients is not None else (200 if quick else 1000)
    rate = args.rate if args.rate is not None else (200.0 if quick else 500.0)
    duration = args.duration if args.duration is not None else (5.0 if quick else 10.0)
    fanout_events = args.fanout_events if args.fanout_events is not None else 2000
    if clients < 1:
        parser.error("--clients must be at least 1")
    if rate <= 0:
        parser.error("--rate must be positive")
    if duration <= 0:
        parser.error("--duration must be positive")
    if fanout_events < 1:
        parser.error("--fanout-events must be at least 1")
    if args.fanout_rate < 0:
        parser.error("--fanout-rate must not be negative")
    if args.client_processes < 1 or args.writer_connections < 1:
        parser.error("--client-processes and --writer-connections must be at least 1")
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    return BenchConfig(
        quick=quick,
        clients=clients,
        rate=rate,
        duration=duration,
        fanout_events=fanout_events,
        fanout_rate=args.fanout_rate,
        client_processes=min(args.client_processes, clients),
        writer_connections=args.writer_connections,
        drain_idle=5.0 if quick else 10.0,
        scenarios=scenarios,
        output=args.output,
    )
