"""Background passes that keep to a share of the event loop.

A pass over many entries in the worker's loop (the dedupe table's refile after an assignment, a sweep of
what expired) yields between chunks; `asyncio.sleep(0)` alone hands the loop back for one cycle and takes it
again, so the pass still runs at full speed and every stage behind it waits: a refile of 270,000 entries
held a live worker at 8,600 events/s for seconds (p50 latency 3.7 s, 15 s to catch up). `Pacer.pause`
sleeps after each chunk for as long as keeps the pass to `share` of the wall time, whatever the host's
speed; such passes are never urgent (an entry filed late only expires later). At a tenth of the loop the
same refile raised the p50 to 165-294 ms for 8 s; the default is a twentieth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

CHUNK = 1000  # entries between two pauses
LOOP_SHARE = 0.05  # of the loop's time a background pass may take


class Pacer:
    def __init__(
        self,
        share: float = LOOP_SHARE,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self._clock, self._sleep = clock, sleep
        self._since = clock()
        self.slept = 0.0  # seconds paused so far

    async def pause(self) -> None:
        """Sleep so that the work since the last pause is at most `share` of the time up to the next one."""
        worked = self._clock() - self._since
        delay = worked * (1 - self.share) / self.share
        self.slept += delay
        await self._sleep(delay)
        self._since = self._clock()
