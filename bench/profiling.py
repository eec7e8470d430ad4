"""Optional py-spy profiles of the bridge while a load runs (``python -m bench --profile``).

py-spy samples the server process from outside (``py-spy record --pid``)
and writes collapsed stacks (``--format raw``), one line per distinct stack
with its sample count. `summarise` turns them into the top functions by
self time (the innermost frame) and by inclusive time (anywhere on the
stack), as percentages of all samples.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


class Profiler:
    """py-spy recording one process until `stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> None:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy is not installed (.venv/bin/pip install py-spy)"
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                # Only samples holding the GIL: Python CPU, not threads waiting.
                "--gil",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        if not self.output.exists():
            self.error = err.decode(errors="replace").strip()[-300:] or "py-spy wrote nothing"


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" → "function (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarise(path: Path, top: int = 15) -> list[str]:
    """Lines: top functions by self and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[leaf] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return ["(no samples)"]
    # py-spy leaves out idle samples: these are shares of the time the server was busy.
    lines = [f"{total:,} busy samples"]
    lines.append("  self time:")
    for name, count in own.most_common(top):
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append("  inclusive time:")
    for name, count in inclusive.most_common(top + 10):
        lines.append(f"    {count / total:6.1%}  {name}")
    return lines
