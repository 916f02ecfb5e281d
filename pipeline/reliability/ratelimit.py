"""Token buckets for per-sink flow control: bytes per second and events per second.

Debt-based: `acquire(n)` (or `charge(n)`, pay-after) may take more than the bucket holds (a batch larger
than one second of bandwidth); the caller then waits until the debt is paid at `rate`. The bucket starts empty, so the
rate over any window never exceeds `rate` by more than one `capacity` (one second of traffic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, *, capacity: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        # One second of burst: enough that time spent writing between two acquires is not lost.
        self.capacity = capacity if capacity is not None else rate
        self.clock = clock
        self._tokens = 0.0
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, amount: float) -> float:
        """Take `amount` tokens now (possibly going into debt); return how long to wait before using them."""
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def wait_time(self) -> float:
        """Seconds until the debt is paid (0.0 when there is none); takes nothing."""
        self._refill()
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def charge(self, amount: float) -> None:
        """Take `amount` tokens now, going into debt if needed (pay-after: the next user waits)."""
        self._refill()
        self._tokens -= amount

    async def acquire(self, amount: float) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            delay = self.delay_for(amount)
            if delay > 0:
                await asyncio.sleep(delay)
