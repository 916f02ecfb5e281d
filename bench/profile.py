"""py-spy on a running worker: record collapsed stacks (by function) and rank them by own and cumulative time.

The raw file (kept gzipped) is py-spy's `--format raw` (one "frame;frame;...;leaf count" line per stack), which
speedscope.app and flamegraph.pl open as they are. Run it on its own with `make bench ARGS="--only profile"`.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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
    """Parse py-spy's output and keep it gzipped beside (`<raw>.gz`: gunzip it for speedscope)."""
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {spy.tail()}")
    spy.log_path.unlink(missing_ok=True)
    text = raw.read_text()
    with gzip.open(raw.with_name(raw.name + ".gz"), "wt") as out:
        out.write(text)
    raw.unlink()
    return parse(text)


def parse(text: str) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


# Where a task's own work starts: frames up to the last of these are the process's start and the event
# loop's dispatch, present in nearly every sample, and left out of the cumulative ranking.
DISPATCH = ("Handle._run ", "BaseEventLoop._run_once ")
# Leaf frames in these files are the event loop's own machinery (scheduling, selector, transports).
LOOP_FILES = ("(asyncio/", "(selectors.py")


def summarise(stacks: dict[str, int], top: int = TOP) -> dict[str, Any]:
    """Total samples, the share whose leaf is asyncio's own machinery, and the `top` frames by own time
    (the leaf) and by cumulative time (anywhere below the loop's dispatch, once per stack), as
    (frame, percent of samples)."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = loop = 0
    for stack, count in stacks.items():
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        loop += count if any(mark in frames[-1] for mark in LOOP_FILES) else 0
        for frame in set(frames[_dispatch_end(frames) :]):
            cumulative[frame] += count
    if total == 0:
        return {"samples": 0, "event_loop_share": 0.0, "own": [], "cumulative": []}
    return {
        "samples": total,
        "event_loop_share": round(100 * loop / total, 1),
        "own": [(frame, round(100 * n / total, 1)) for frame, n in own.most_common(top)],
        "cumulative": [(frame, round(100 * n / total, 1)) for frame, n in cumulative.most_common(top)],
    }


def _dispatch_end(frames: list[str]) -> int:
    for mark in DISPATCH:
        for index in range(len(frames) - 1, -1, -1):
            if frames[index].startswith(mark):
                return index + 1 if index + 1 < len(frames) else index
    return 0
