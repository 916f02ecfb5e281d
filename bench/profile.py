"""py-spy on a running worker: record collapsed stacks (by function) and rank them by own and cumulative time.

The raw file is py-spy's `--format raw` (one "frame;frame;...;leaf count" line per stack), which
speedscope.app and flamegraph.pl open as they are. Run it on its own with `make bench ARGS="--only profile"`.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path

from bench.procs import Child

TOP = 15


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return found


async def record(pid: int, seconds: float, raw: Path) -> dict[str, int]:
    """Sample `pid` for `seconds` at 100 Hz into `raw`; return the collapsed stacks (stack -> samples)."""
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "100"]
    argv += ["--function", "--format", "raw", "--output", str(raw)]
    spy = Child("py-spy", argv, {}, raw.with_suffix(".log"), raw.parent).start()
    try:
        assert spy.proc is not None
        await asyncio.to_thread(spy.proc.wait, seconds + 60)
    finally:
        spy.stop(10)
    return load(raw, spy)


def load(raw: Path, spy: Child) -> dict[str, int]:
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {spy.tail()}")
    spy.log_path.unlink(missing_ok=True)
    return parse(raw.read_text())


def parse(text: str) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


def summarise(stacks: dict[str, int], top: int = TOP) -> dict[str, object]:
    """Total samples and the `top` frames by own time (the leaf) and by cumulative time (anywhere in the
    stack, once per stack), as (frame, percent of samples)."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for stack, count in stacks.items():
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            cumulative[frame] += count
    if total == 0:
        return {"samples": 0, "own": [], "cumulative": []}
    return {
        "samples": total,
        "own": [(frame, round(100 * n / total, 1)) for frame, n in own.most_common(top)],
        "cumulative": [(frame, round(100 * n / total, 1)) for frame, n in cumulative.most_common(top)],
    }
