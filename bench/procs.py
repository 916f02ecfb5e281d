"""Child processes of the benchmark (workers, the bare loop, the naive agent, py-spy): started in their own
session so a Ctrl-C reaches only the harness, killed by the kernel if the harness dies (PR_SET_PDEATHSIG),
and stopped by `stop_all` on every way out. CPU time and peak RSS come from /proc, and so does the CPU the
hypervisor took from the whole host meanwhile (`Steal`): on a shared VM that, not the contender, can be
what a slow run measured."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RUNNING: list[Child] = []


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def stolen_cpu_seconds(stat: str | None = None) -> float | None:
    """CPU seconds the hypervisor has taken from this host since boot, all CPUs together: the `steal` column
    of /proc/stat's first line (None where the kernel does not report it)."""
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
    except OSError:
        return None
    fields = text.split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / _CLOCK_TICKS


class Steal:
    """What the hypervisor took from this host from the moment this is made until `cores()`, in cores (CPU
    seconds stolen per second of wall time, summed over the host's CPUs)."""

    def __init__(self) -> None:
        self.since, self.stolen = time.monotonic(), stolen_cpu_seconds()

    def cores(self) -> float | None:
        stolen, elapsed = stolen_cpu_seconds(), time.monotonic() - self.since
        if stolen is None or self.stolen is None or elapsed <= 0:
            return None
        return round((stolen - self.stolen) / elapsed, 3)


class Child:
    """One process with its output in `log_path`; `started` is the wall-clock time it was spawned."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> Child:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started = time.time()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_problem(self) -> str | None:
        """Why the process is gone when it should not be (None while it runs)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}"

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the process and its waited-for children so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AssertionError):
            return None
        utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
        return (utime + stime + cutime + cstime) / _CLOCK_TICKS

    def memory_mb(self) -> tuple[float, float] | None:
        """(current RSS, peak RSS) in MB from /proc/<pid>/status (VmRSS, VmHWM)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except (OSError, AssertionError):
            return None
        values = {}
        for line in status.splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds (to the whole session the child leads)."""
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(timeout: float = 15.0) -> None:
    """Stop every child still running (the harness's way out, including Ctrl-C)."""
    for child in list(reversed(_RUNNING)):
        child.stop(timeout)
