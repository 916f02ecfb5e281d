"""Token buckets: per-sink flow control (bytes and events per second) and per-client request limits
(POST /ingest).

Debt-based: `acquire(n)` (or `charge(n)`, pay-after) may take more than the bucket holds (a batch larger
than one second of bandwidth); the caller then waits until the debt is paid at `rate`. The bucket starts empty, so the
rate over any window never exceeds `rate` by more than one `capacity` (one second of traffic).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
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


class ClientBuckets:
    """One token bucket per client (e.g. per remote address) for request rate limits: a request that the
    bucket cannot pay for is refused (nothing is taken) with the seconds until it could be paid. Buckets
    start full (a burst of `capacity`); at most `max_clients` are kept, the least recently used go first."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.capacity = capacity if capacity is not None else rate
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, stamp)

    def try_take(self, client: str, amount: float = 1.0) -> float:
        """Take `amount` tokens for `client`: 0.0 when taken, else the seconds until they would be there
        (inf when `amount` exceeds the capacity: it never will be)."""
        now = self.clock()
        tokens, stamp = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
        wait = 0.0
        if amount > self.capacity:
            wait = math.inf
        elif tokens >= amount:
            tokens -= amount
        else:
            wait = (amount - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait
