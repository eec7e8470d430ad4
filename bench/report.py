"""Figures: percentiles, medians, the machine, the printed tables and the JSON file."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Number = float | int


@dataclass
class Record:
    """One figure. `target` says what it must be, `met` whether it is (None: no target).

    `floor` is the raw floor's figure for the same metric in the same run and
    `ratio` = value ÷ floor. `runs` holds the individual repetitions the value
    is the median of. Detail records (CPU, connect times …) are printed in a
    second table; all records go to the JSON file.
    """

    scenario: str
    metric: str
    value: Number | str | None
    unit: str
    target: str | None = None
    met: bool | None = None
    floor: Number | None = None
    ratio: float | None = None
    runs: list[Number] = field(default_factory=list)
    detail: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "scenario": self.scenario,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "floor": self.floor,
            "ratio": self.ratio,
        }
        if len(self.runs) > 1:
            body["runs"] = self.runs
        return body


def detail(scenario: str, metric: str, value: Number | str | None, unit: str) -> Record:
    return Record(scenario, metric, value, unit, detail=True)


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor == 0:
        return None
    return value / floor


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
        detail("machine", "cpu count", os.cpu_count() or 0, "cpus"),
        detail("machine", "cpu model", cpu_model(), ""),
        detail("machine", "python", platform.python_version(), ""),
        detail("machine", "postgres", postgres_version, ""),
        detail("machine", "database", database, ""),
        detail("machine", "platform", platform.platform(), ""),
    ]


def fmt(value: Number | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
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


def _value_cell(record: Record) -> str:
    text = fmt(record.value)
    if len(record.runs) > 1:
        text += f" ({fmt(min(record.runs))}–{fmt(max(record.runs))})"
    return text


def _met_cell(record: Record) -> str:
    if record.met is None:
        return "—" if record.target is None else "n/a"
    return "met" if record.met else "NOT MET"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(headers), "-" * len(line(headers))]
    out += [line(r) for r in rows]
    return out


def render_main(records: Sequence[Record]) -> str:
    rows = [
        [
            r.scenario,
            r.metric,
            _value_cell(r),
            r.unit,
            r.target or "",
            _met_cell(r),
            fmt(r.floor) if r.floor is not None else "",
            f"{r.ratio:.2f}×" if r.ratio is not None else "",
        ]
        for r in records
        if not r.detail
    ]
    if not rows:
        return ""
    headers = ["scenario", "metric", "value (min–max)", "unit", "target", "met", "floor", "ratio"]
    return "\n".join(_table(headers, rows, right={2, 6, 7}))


def _clip(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_details(records: Sequence[Record]) -> str:
    rows = [[r.scenario, r.metric, _clip(fmt(r.value)), r.unit] for r in records if r.detail]
    if not rows:
        return ""
    return "\n".join(_table(["scenario", "detail", "value", "unit"], rows, right={2}))


def write_json(records: Sequence[Record], path: Path) -> None:
    """Write atomically (a .tmp file renamed over the old results)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([r.to_json() for r in records], indent=2) + "\n")
    tmp.replace(path)
