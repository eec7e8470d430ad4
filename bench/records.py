"""Turn the sessions' measurements into records: value, target, met, floor, ratio."""

from __future__ import annotations

from collections.abc import Callable

from bench.cluster import records as cluster_records
from bench.config import BenchConfig
from bench.report import Record, detail, median, ratio
from bench.scenarios import Idle, Leader, Results, Run, Step, is_real

KIB = 1024


def _median_of(
    runs: list[Run], get: Callable[[Run], float | None]
) -> tuple[float | None, list[float]]:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return median(values), [round(v, 3) for v in values]


def _cpu_detail(scenario: str, kind: str, runs: list[Run]) -> Record:
    def side(name: str) -> str:
        value = median([r.cpu.get(name) for r in runs])
        return "—" if value is None else f"{value:.0f}"

    return detail(
        scenario,
        f"{kind}: CPU server / clients / writer / postgres / not ours; machine",
        f"{side('server')} / {side('clients')} / {side('writer')} / {side('postgres')} / "
        f"{side('others')}; {side('machine')}",
        "% of a core; % of all",
    )


def _labels(found: dict[str, object]) -> list[str]:
    """The real bridge's labels in `found` (real-wal, real-triggers …), in run order."""
    return [k for k in found if is_real(k)]


def _leader_records(scenario: str, label: str, runs: list[Run]) -> list[Record]:
    """The capturing leader's statements per change (and per wake-up on the trigger path)."""
    counted = [r for r in runs if r.leader is not None]
    if not counted:
        return []
    statements = sum(r.leader.statements for r in counted if r.leader is not None)
    changes = max(sum(r.written.committed for r in counted), 1)
    per_change = statements / changes
    wal = all(r.leader is not None and r.leader.wake_ups is None for r in counted)
    out = [
        Record(
            scenario,
            f"{label}: leader statements per change",
            per_change,
            "statements",
            "≤ 0.05" if wal else None,
            _le(per_change, 0.05) if wal else None,
        )
    ]
    if not wal:
        wake_ups = sum(r.leader.wake_ups or 0 for r in counted if r.leader is not None)
        busy = sum(r.leader.busy_polls for r in counted if r.leader is not None)
        # Every pass is one statement: a NOTIFY wake-up, a busy poll (writers were
        # mid-transaction) or a pass straight after one that numbered rows.
        out.append(
            detail(
                scenario,
                f"{label}: sequencer statements / NOTIFY wake-ups / busy polls",
                f"{statements:,} / {wake_ups:,} / {busy:,}",
                "statements / wake-ups / polls",
            )
        )
    return out


def p1_records(results: Results) -> list[Record]:
    out: list[Record] = []
    for label in _labels(dict(results.p1)):
        out += _p1_records(results, label)
    return out


def _p1_records(results: Results, label: str) -> list[Record]:
    out: list[Record] = []
    real = results.p1.get(label, [])
    floor = results.p1.get("floor", [])
    if not real:
        return out
    p50, p50_runs = _median_of(real, lambda r: r.p50)
    p99, p99_runs = _median_of(real, lambda r: r.p99)
    f50, _ = _median_of(floor, lambda r: r.p50)
    f99, _ = _median_of(floor, lambda r: r.p99)
    lost = sum(r.lost for r in real)
    floor_lost = sum(r.lost for r in floor) if floor else None
    out += [
        Record(
            "P1",
            f"{label}: commit → client p50",
            p50,
            "ms",
            "≤ 5",
            _le(p50, 5),
            f50,
            ratio(p50, f50),
            p50_runs,
        ),
        Record(
            "P1",
            f"{label}: commit → client p99",
            p99,
            "ms",
            "≤ 25",
            _le(p99, 25),
            f99,
            ratio(p99, f99),
            p99_runs,
        ),
        Record("P1", f"{label}: events lost", lost, "frames", "0", lost == 0, floor_lost),
    ]
    rel = ratio(p50, f50)
    out.append(
        Record(
            "P1",
            f"{label}: p50 ÷ floor p50",
            rel,
            "×",
            "≤ 2",
            _le(rel, 2.0),
            None,
            None,
            [round(r.p50 / f, 3) for r, f in _paired(real, floor) if r.p50 is not None and f],
        )
    )
    out += _leader_records("P1", label, real)
    out += _query_details("P1", label, real)
    for kind, runs in ((label, real), ("floor", floor)):
        if runs:
            out.append(_cpu_detail("P1", kind, runs))
            out.append(
                detail(
                    "P1",
                    f"{kind}: write rate / frames delivered / misrouted / duplicates",
                    f"{median([r.written.rate for r in runs]) or 0:,.0f} / "
                    f"{sum(r.distinct for r in runs):,} / "
                    f"{sum(r.delivery.misrouted for r in runs)} / "
                    f"{sum(r.delivery.duplicates for r in runs)}",
                    "changes/s / frames",
                )
            )
            if is_real(kind):
                seq = [r for r in runs if r.sequencing]
                out.append(
                    detail(
                        "P1",
                        f"{kind}: trigger → sequenced p50 / p99 (outbox timestamps)",
                        f"{_ms(median([_p(r.sequencing, 0.5) for r in seq]))} / "
                        f"{_ms(median([_p(r.sequencing, 0.99) for r in seq]))}",
                        "ms",
                    )
                )
            out.append(
                detail(
                    "P1",
                    f"{kind}: writer COMMIT p50",
                    median([_p(sorted(r.written.commit_ms), 0.5) for r in runs]),
                    "ms",
                )
            )
    return out


def _query_details(scenario: str, label: str, runs: list[Run]) -> list[Record]:
    """What the bridge sent to Postgres during `runs` (only when it went through the proxy)."""
    timed = [r for r in runs if r.queries is not None]
    if not timed:
        return []
    changes = max(sum(r.written.committed for r in timed), 1)
    counts: dict[str, int] = {}
    seconds: dict[str, list[float]] = {}
    for run in timed:
        assert run.queries is not None
        for text, count in run.queries.by_text.items():
            counts[text] = counts.get(text, 0) + count
        for text, samples in run.queries.seconds.items():
            seconds.setdefault(text, []).extend(samples)
    out = [
        detail(
            scenario,
            f"{label}: statements sent to Postgres per change",
            sum(counts.values()) / changes,
            "statements",
        )
    ]
    for text, count in sorted(counts.items(), key=lambda kv: -kv[1])[:4]:
        samples = sorted(seconds.get(text, []))
        trip = (
            f"; round trip p50 {samples[len(samples) // 2] * 1000:.1f} / p99 "
            f"{samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000:.1f} ms"
            if samples
            else ""
        )
        out.append(
            detail(
                scenario,
                f"{label}: {count / changes:.2f}/change{trip}",
                text[:70],
                "",
            )
        )
    return out


def _paired(real: list[Run], floor: list[Run]) -> list[tuple[Run, float | None]]:
    return [(r, f.p50) for r, f in zip(real, floor, strict=False)]


def _p(values: list[float], q: float) -> float | None:
    from bench.report import percentile

    return percentile(values, q)


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def _ge(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _capacity(steps: list[Step]) -> tuple[float | None, bool]:
    """Highest passing rate, and whether the ramp ended without a failure."""
    passed = [s.rate for s in steps if s.passed]
    topped = bool(steps) and all(s.passed for s in steps)
    return (max(passed) if passed else (0.0 if steps else None)), topped


def p2_records(results: Results, config: BenchConfig) -> list[Record]:
    out: list[Record] = []
    labels = _labels(dict(results.p2))
    for label in labels:
        out += _p2_records(results, config, label)
    for label in [k for k in results.p2 if k.startswith("floor")]:
        fsteps = results.p2[label]
        for step in fsteps:
            out.append(_p2_step_detail(label, step))
        _, ftopped = _capacity(fsteps)
        if labels and ftopped:
            top = fsteps[-1].rate
            out.append(detail("P2", f"{label}: ramp ended without failing", top, "/s"))
    return out


def _p2_step_detail(kind: str, step: Step) -> Record:
    run = step.run
    return detail(
        "P2",
        f"{kind} @{step.rate:,.0f}/s: achieved / p50 / p99 / lost / server CPU",
        f"{run.written.rate:,.0f} / {_ms(run.p50)} / {_ms(run.p99)} / {run.lost} / "
        f"{run.cpu['server'] or 0:.0f}% → {'pass' if step.passed else 'FAIL'}",
        "changes/s / ms / ms / frames",
    )


def _p2_records(results: Results, config: BenchConfig, label: str) -> list[Record]:
    out: list[Record] = []
    real = results.p2.get(label, [])
    if not real:
        return out
    cap, topped = _capacity(real)
    # "real-wal ×20 rows" is measured against "floor ×20 rows".
    _, _, rows = label.partition(" ")
    fcap, _ = _capacity(results.p2.get(f"floor {rows}" if rows else "floor", []))
    goal = 20000 if rows else 5000
    out.append(
        Record(
            "P2",
            f"{label}: capacity with p99 ≤ 100 ms" + (" (ramp top)" if topped else ""),
            cap,
            "changes/s",
            f"≥ {goal:,}",
            _ge(cap, goal),
            fcap,
            ratio(cap, fcap),
        )
    )
    for step in real:
        out.append(_p2_step_detail(label, step))
    for step in real:
        out += [
            detail(r.scenario, f"@{step.rate:,.0f}/s {r.metric}", r.value, r.unit)
            for r in _leader_records("P2", label, [step.run])
        ]
        out += _query_details("P2", f"{label} @{step.rate:,.0f}/s", [step.run])
    return out


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def p3_records(results: Results) -> list[Record]:
    out: list[Record] = []
    for label in _labels(dict(results.p3)):
        out += _p3_records(results, label)
    return out


def _p3_records(results: Results, label: str) -> list[Record]:
    out: list[Record] = []
    real = results.p3.get(label, [])
    size = label.partition("@")[2]
    floor = results.p3.get(f"floor@{size}" if size else "floor", [])
    if not real:
        return out
    rate, runs = _median_of(real, lambda r: r.throughput)
    frate, _ = _median_of(floor, lambda r: r.throughput)
    rel = ratio(rate, frate)
    out.append(
        Record(
            "P3",
            f"{label}: delivered events/s",
            rate,
            "frames/s",
            "≥ 1.5 × floor",
            _ge(rel, 1.5),
            frate,
            rel,
            runs,
        )
    )
    lost = sum(r.lost for r in real)
    out.append(
        Record(
            "P3",
            f"{label}: events lost",
            lost,
            "frames",
            "0",
            lost == 0,
            sum(r.lost for r in floor) if floor else None,
        )
    )
    for kind, kruns in ((label, real), (f"floor@{size}" if size else "floor", floor)):
        if kruns:
            out.append(_cpu_detail("P3", kind, kruns))
            out.append(
                detail(
                    "P3",
                    f"{kind}: clients × changes; burst latency p50 / p99",
                    f"{kruns[0].receivers:,} × {kruns[0].written.committed:,}; "
                    f"{_ms(median([r.p50 for r in kruns]))} / "
                    f"{_ms(median([r.p99 for r in kruns]))}",
                    "ms",
                )
            )
    return out


def p4_records(results: Results) -> list[Record]:
    real = results.idle.get("real")
    if real is None or real.opened is None:
        return []
    floor = results.idle.get("floor")
    value = _kib(real)
    fvalue = _kib(floor) if floor is not None else None
    out = [
        Record(
            "P4",
            "RSS per idle subscribed connection",
            value,
            "KiB",
            "≤ 15",
            _le(value, 15),
            fvalue,
            ratio(value, fvalue),
        )
    ]
    for idle in (real, floor):
        if idle is not None and idle.opened is not None:
            out.append(
                detail(
                    "P4",
                    f"{idle.kind}: RSS at 0 → at {idle.opened.connected:,} connections",
                    f"{idle.rss0 / 2**20:.1f} → {idle.rss_n / 2**20:.1f}",
                    "MiB",
                )
            )
            out.append(
                detail(
                    "P4",
                    f"{idle.kind}: connect + subscribe {idle.opened.connected:,} sockets",
                    idle.opened.seconds,
                    "s",
                )
            )
    return out


def _kib(idle: Idle | None) -> float | None:
    if idle is None or idle.bytes_per_connection is None:
        return None
    return idle.bytes_per_connection / KIB


def p5_records(results: Results, config: BenchConfig, fd_limits: str) -> list[Record]:
    idle = results.idle.get("real")
    if idle is None or idle.opened is None or idle.held is None:
        return []
    held = idle.held
    errors = (
        idle.opened.failed
        + held.closed_early
        + max(held.pings_sent - held.pongs, 0)
        + sum(held.other.values())
    )
    goal = 10_000
    target = f"≥ {goal:,}, {config.hold:g} s" if idle.target >= goal else f"{idle.target:,} (quick)"
    held_ok = held.open >= min(goal, idle.target) and errors == 0
    out = [
        Record(
            "P5",
            f"connections held {idle.hold_seconds:.0f} s with heartbeats",
            held.open,
            "connections",
            target,
            held_ok,
        ),
        Record("P5", "errors while held", errors, "errors", "0", errors == 0),
    ]
    if idle.stretch_open is not None:
        out.append(
            Record(
                "P5",
                "most concurrent connections (stretch)",
                idle.stretch_open,
                "connections",
                f"{config.stretch:,} (stretch)",
                idle.stretch_open >= config.stretch,
            )
        )
        if idle.stretch_errors:
            out.append(detail("P5", "stretch stopped at", "; ".join(idle.stretch_errors), ""))
        out.append(detail("P5", "bench process fd limit (the bridge inherits it)", fd_limits, ""))
    out += [
        detail(
            "P5",
            "pings sent / pongs received (JSON heartbeat)",
            f"{held.pings_sent:,} / {held.pongs:,}",
            "frames",
        ),
        detail("P5", "server WebSocket pings answered", held.server_pings, "frames"),
    ]
    if held.rtts_ms:
        rtts = held.rtts_ms
        out.append(
            detail(
                "P5",
                "heartbeat ping → pong p50 / p99 / max (event-loop stalls show here)",
                f"{_p(rtts, 0.5) or 0:.1f} / {_p(rtts, 0.99) or 0:.1f} / {rtts[-1]:.1f}",
                "ms",
            )
        )
    if held.closed_examples:
        out.append(detail("P5", "closed early, e.g.", held.closed_examples[0], ""))
    if held.other:
        out.append(detail("P5", "unexpected frames", str(held.other), ""))
    return out


def p6_records(results: Results) -> list[Record]:
    out: list[Record] = []
    labels = list(dict.fromkeys(key.split(":", 1)[0] for key in results.p6))
    for kind in labels:
        out += _p6_records(results, kind)
    return out


# P6 targets: the capture's INSERT rows/s ÷ plain, single-row and 100-row.
P6_GOALS = {"real-wal": (0.9, 0.6), "real-triggers": (0.6, 0.8)}


def _p6_records(results: Results, kind: str) -> list[Record]:
    out: list[Record] = []
    one, many = P6_GOALS.get(kind, (0.6, 0.8))
    for rows, label, goal in ((1, "single-row INSERT txns", one), (100, "100-row INSERTs", many)):
        plain = results.p6.get(f"{kind}:plain-{rows}", [])
        tracked = results.p6.get(f"{kind}:tracked-{rows}", [])
        if not plain or not tracked:
            continue
        value = median(tracked)
        floor = median(plain)
        rel = ratio(value, floor)
        out.append(
            Record(
                "P6",
                f"{kind}: {label}: captured (floor = not captured)",
                value,
                "rows/s",
                f"≥ {goal} × floor",
                _ge(rel, goal),
                floor,
                rel,
                [round(v, 1) for v in tracked],
            )
        )
        spent = results.p6_leader.get(f"{kind}:tracked-{rows}")
        if spent is not None:
            out.append(_p6_leader_detail(kind, label, *spent))
    return out


def _p6_leader_detail(kind: str, label: str, spent: Leader, rows: int) -> Record:
    text = f"{spent.statements / max(rows, 1):.4f}"
    if spent.wake_ups is not None:
        text += f" ({spent.wake_ups:,} NOTIFY wake-ups, {spent.busy_polls:,} busy polls)"
    return detail("P6", f"{kind}: {label}: leader statements per captured row", text, "")


def p7_records(results: Results) -> list[Record]:
    idle = results.idle.get("real")
    if idle is None or idle.queries is None or idle.hold_seconds <= 0:
        return []
    per_minute = idle.queries.statements / idle.hold_seconds * 60
    out = [
        Record(
            "P7",
            "queries to Postgres per minute while idle",
            per_minute,
            "queries/min",
            "0",
            idle.queries.statements == 0,
        ),
        detail("P7", "idle window (connections held, no changes)", idle.hold_seconds, "s"),
    ]
    for text, count in sorted(idle.queries.by_text.items(), key=lambda kv: -kv[1])[:3]:
        out.append(detail("P7", f"idle statement ×{count}", text[:80], ""))
    return out


def p8_records(results: Results, config: BenchConfig) -> list[Record]:
    out: list[Record] = []
    naive = results.p1.get("naive", [])
    floor1 = results.p1.get("floor", [])
    if naive:
        p50, runs50 = _median_of(naive, lambda r: r.p50)
        p99, runs99 = _median_of(naive, lambda r: r.p99)
        f50, _ = _median_of(floor1, lambda r: r.p50)
        f99, _ = _median_of(floor1, lambda r: r.p99)
        out += [
            Record(
                "P8",
                "naive send_json loop: P1 p50",
                p50,
                "ms",
                None,
                None,
                f50,
                ratio(p50, f50),
                runs50,
            ),
            Record(
                "P8",
                "naive send_json loop: P1 p99",
                p99,
                "ms",
                None,
                None,
                f99,
                ratio(p99, f99),
                runs99,
            ),
            Record(
                "P8", "naive send_json loop: P1 events lost", sum(r.lost for r in naive), "frames"
            ),
        ]
        out.append(_cpu_detail("P8", "naive P1", naive))
    naive3 = results.p3.get("naive", [])
    if naive3:
        rate, runs = _median_of(naive3, lambda r: r.throughput)
        frate, _ = _median_of(results.p3.get("floor", []), lambda r: r.throughput)
        out.append(
            Record(
                "P8",
                "naive send_json loop: P3 delivered events/s",
                rate,
                "frames/s",
                None,
                None,
                frate,
                ratio(rate, frate),
                runs,
            )
        )
        out.append(_cpu_detail("P8", "naive P3", naive3))
    poll = results.polling
    if poll is not None and poll.window > 0:
        out += [
            Record(
                "P8",
                f"polling every {config.poll_interval:g} s: DB queries/min "
                f"({poll.clients:,} clients)",
                poll.queries / poll.window * 60,
                "queries/min",
            ),
            Record("P8", "polling: commit → client p50", poll.run.p50, "ms"),
            Record("P8", "polling: commit → client p99", poll.run.p99, "ms"),
            Record("P8", "polling: changes never seen", poll.run.lost, "changes"),
            detail(
                "P8",
                "polling: all statements the naive server sent (with asyncpg pool resets)",
                poll.statements.statements / poll.window * 60,
                "statements/min",
            ),
            detail(
                "P8",
                "polling: requests / reconnects (keep-alive timeout) / window",
                f"{poll.requests:,} / {poll.reconnects:,} / {poll.window:.1f}",
                "requests / connections / s",
            ),
        ]
    ours = results.ours_under_poll_load
    if ours is not None:
        run, sent, window = ours
        out += [
            Record(
                "P8",
                f"ours, same load ({config.poll_clients:,} clients, "
                f"{config.poll_rate:g} changes/s): DB statements/min",
                sent.statements / window * 60,
                "queries/min",
            ),
            Record("P8", "ours, same load: commit → client p50", run.p50, "ms"),
            Record("P8", "ours, same load: commit → client p99", run.p99, "ms"),
        ]
        out += _query_details("P8", "ours at the polling load", [run])
    return out


def connect_records(results: Results) -> list[Record]:
    return [
        detail("connect", f"{label}: {r.connected:,} sockets", r.seconds, "s")
        for label, r in results.connect.items()
    ]


def build(results: Results, config: BenchConfig, fd_limits: str) -> list[Record]:
    return [
        *p1_records(results),
        *p2_records(results, config),
        *p3_records(results),
        *p4_records(results),
        *p5_records(results, config, fd_limits),
        *p6_records(results),
        *p7_records(results),
        *p8_records(results, config),
        *connect_records(results),
        *cluster_records(results.p9),
    ]
