"""py-spy profiles of a process under load, summarised as top frames (self and inclusive)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RAY_MAIN_LOOP = "Worker.main_loop"


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start `py-spy record` (collapsed stacks, non-blocking) on a process; None without py-spy."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def summarise(collapsed: Path, top: int = 15) -> dict[str, object]:
    """Top frames by self time and by inclusive time, in percent of the samples taken."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        # A Ray worker's main thread waits inside Ray's C++ task loop; the actor's own code runs on
        # its asyncio thread. Only the latter is the actor's work.
        if not frames or any(f.startswith(RAY_MAIN_LOOP) for f in frames):
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def table(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)] if total else []

    return {"samples": total, "self": table(self_counts), "inclusive": table(inclusive)}
