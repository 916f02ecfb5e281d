"""Keeping a sink's runner alive, within reason.

Sink failures never reach here: the runner handles them (retry tiers, DLQ, breaker, backoff). What does
is a bug or a broken dependency of the runner itself (a consumer that cannot seek, an error in the code).
A crash is logged, counted and the runner restarted from its committed offsets; a runner that crashes
`max_crashes` times within `window_s` is given up on and the error raised, so that the worker exits
non-zero and its supervisor (systemd, Kubernetes) restarts it, rather than leave a live process that
delivers nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from pipeline.observability import metrics

log = structlog.get_logger("pipeline.deliver")

MAX_CRASHES = 5
CRASH_WINDOW_S = 300.0
RESTART_DELAY_S = 1.0


class RunnerCrashLoop(RuntimeError):
    """A delivery runner kept crashing: the worker must stop."""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    max_crashes: int = MAX_CRASHES,
    window_s: float = CRASH_WINDOW_S,
    restart_delay_s: float = RESTART_DELAY_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_crash: Callable[[int], None] | None = None,
) -> None:
    """Run `run` until it returns; restart it after a crash; raise RunnerCrashLoop after `max_crashes`
    crashes within `window_s` seconds."""
    crashes: deque[float] = deque()
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            now = clock()
            crashes.append(now)
            while crashes and now - crashes[0] > window_s:
                crashes.popleft()
            metrics.RUNNER_CRASHES.labels(name).inc()
            if on_crash is not None:
                on_crash(len(crashes))
            if len(crashes) >= max_crashes:
                log.critical(
                    "delivery keeps crashing; stopping the worker", sink=name, crashes=len(crashes), window_s=window_s
                )
                raise RunnerCrashLoop(
                    f"delivery to sink {name} crashed {len(crashes)} times within {window_s:g}s: {exc!r}"
                ) from exc
            log.exception("delivery crashed; restarting", sink=name, crashes=len(crashes))
            await sleep(restart_delay_s)
