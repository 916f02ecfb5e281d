"""How long a small durable write takes on the database's disk while a latency run is measured.

Every commit of the PostgreSQL sink waits for its WAL to reach the disk (fdatasync). On a host where the
broker shares that disk, the broker's log (Kafka never syncs it; it relies on replication) stays in the page
cache until the kernel writes it back: Linux keeps one "dirtied" time per file and, once it is 30 s old
(vm.dirty_expire_centisecs), writes the whole file's dirty pages at once. At 7,000 events/s the broker
dirtied 9 MB/s, so every 30 s about 270 MB went to the disk together, and a 4 KiB fdatasync beside it took
450-660 ms (6 December). Those are the seconds whose p99 reaches 500-900 ms while the others stay at
150-170 ms: a stall of the disk, not of the worker (its ingest and dedupe hops did not move).

`SyncProbe` measures it from outside the product, as `bench.procs.Steal` measures the hypervisor: a thread
writes 4 KiB to a file in the given directory and fdatasyncs it every 50 ms, and keeps each duration. The
thread costs nothing measurable (a syscall pair per 50 ms) and does not wait on the harness's event loop.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.report import DISK_STALL_MS, percentile

PROBE_EVERY_S = 0.05
PROBE_BYTES = 4096


@dataclass
class SyncStalls:
    """What the probe saw: the percentiles of its syncs and every one over DISK_STALL_MS, with its start as an
    offset in seconds from the measured window's first second (`at`, set by `relative_to`)."""

    directory: str
    syncs: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, epoch seconds or offset; ms)

    def relative_to(self, start: float) -> SyncStalls:
        """The same, with each stall's start as seconds after `start` (epoch seconds)."""
        return replace(self, stalls=[(round(at - start, 1), ms) for at, ms in self.stalls])


class SyncProbe:
    """A thread that fdatasyncs 4 KiB in `directory` every PROBE_EVERY_S until `stop()`."""

    def __init__(self, directory: Path, *, every_s: float = PROBE_EVERY_S) -> None:
        self.directory = directory
        self.every_s = every_s
        self._durations: list[tuple[float, float]] = []  # (start, epoch seconds; duration, ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._path = directory / f".bench-sync-probe-{os.getpid()}"

    def start(self) -> SyncProbe:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="bench-sync-probe", daemon=True)
        self._thread.start()
        return self

    @property
    def syncs(self) -> int:
        return len(self._durations)

    def _run(self) -> None:
        block = b"\0" * PROBE_BYTES
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._stop.is_set():
                started, began = time.time(), time.perf_counter()
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                self._durations.append((started, (time.perf_counter() - began) * 1000))
                self._stop.wait(self.every_s)
        finally:
            os.close(fd)
            self._path.unlink(missing_ok=True)

    def stop(self) -> SyncStalls:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return summarise(str(self.directory), list(self._durations))


def summarise(directory: str, durations: list[tuple[float, float]]) -> SyncStalls:
    if not durations:
        return SyncStalls(directory)
    values = [ms for _, ms in durations]
    return SyncStalls(
        directory,
        syncs=len(values),
        p50_ms=round(percentile(values, 0.50), 1),
        p99_ms=round(percentile(values, 0.99), 1),
        max_ms=round(max(values), 1),
        stalls=[(at, round(ms, 1)) for at, ms in durations if ms > DISK_STALL_MS],
    )
