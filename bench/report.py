"""Figures: percentiles, the machine, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Record:
    scenario: str
    metric: str
    value: float | int | str | None
    unit: str


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_records(postgres_version: str, database: str) -> list[Record]:
    return [
        Record("machine", "cpu count", os.cpu_count() or 0, "cpus"),
        Record("machine", "cpu model", cpu_model(), ""),
        Record("machine", "python", platform.python_version(), ""),
        Record("machine", "postgres", postgres_version, ""),
        Record("machine", "database", database, ""),
        Record("machine", "platform", platform.platform(), ""),
    ]


def _format(value: float | int | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return value


def render_table(records: Sequence[Record]) -> str:
    """Machine lines first, then one column of values per scenario."""
    lines: list[str] = []
    machine = [r for r in records if r.scenario in ("machine", "run")]
    for record in machine:
        unit = f" {record.unit}" if record.unit else ""
        lines.append(f"{record.metric + ':':<10} {_format(record.value)}{unit}")
    scenarios = list(dict.fromkeys(r.scenario for r in records if r not in machine))
    if not scenarios:
        return "\n".join(lines)
    metrics: dict[str, str] = {}
    values: dict[tuple[str, str], str] = {}
    for record in records:
        if record in machine:
            continue
        metrics.setdefault(record.metric, record.unit)
        values[record.scenario, record.metric] = _format(record.value)
    name_width = max(len("metric"), *(len(m) for m in metrics))
    unit_width = max(len("unit"), *(len(u) for u in metrics.values()))
    widths = [max(len(s), *(len(values.get((s, m), "")) for m in metrics), 8) for s in scenarios]
    header = (
        f"{'metric':<{name_width}}  "
        + "  ".join(f"{s:>{w}}" for s, w in zip(scenarios, widths, strict=True))
        + f"  {'unit':<{unit_width}}"
    )
    lines += ["", header, "-" * len(header)]
    for metric, unit in metrics.items():
        cells = "  ".join(
            f"{values.get((s, metric), '—'):>{w}}" for s, w in zip(scenarios, widths, strict=True)
        )
        lines.append(f"{metric:<{name_width}}  {cells}  {unit:<{unit_width}}".rstrip())
    return "\n".join(lines)


def write_json(records: Sequence[Record], path: Path) -> None:
    """Write atomically (a .tmp file renamed over the old results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
    tmp.replace(path)
