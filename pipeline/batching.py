"""Size- and time-bounded batching with backpressure, shared by every agent.

Agents iterate their stream one event at a time (so Faust's per-event context stays right for tables)
and hand each item to a `Batcher`. A single flusher task takes up to `max_size` items, or what has
arrived once the oldest item has waited `linger`, and awaits `handle(batch)` - which writes the batch
(or waits for its produce acknowledgements) and only then acknowledges the source offsets. Batches are
handled one at a time, in arrival order. `add` blocks while `max_pending` items wait, so a slow sink
slows the consumer instead of growing memory.

If `handle` raises, the batcher fails: the error is re-raised from `add`, and nothing of that batch
(or any later one) is acknowledged, so the events are delivered again after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class BatcherFailed(RuntimeError):
    pass


class Batcher(Generic[T]):
    def __init__(
        self,
        handle: Callable[[list[T]], Awaitable[None]],
        *,
        max_size: int,
        linger: float,
        max_pending: int | None = None,
        name: str = "batcher",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._handle = handle
        self.max_size = max_size
        self.linger = max(0.0, linger)
        self.max_pending = max_pending or 2 * max_size
        self.name = name
        self._items: deque[tuple[float, T]] = deque()
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._in_flight = 0

    @property
    def pending(self) -> int:
        """Items waiting or being handled."""
        return len(self._items) + self._in_flight

    async def add(self, item: T) -> None:
        self._raise_if_failed()
        while len(self._items) >= self.max_pending:
            self._drained.clear()
            await self._wait(self._drained)
            self._raise_if_failed()
        self._items.append((time.monotonic(), item))
        self._arrived.set()

    async def flush(self) -> None:
        """Wait until everything added so far has been handled."""
        while self.pending:
            self._raise_if_failed()
            self._drained.clear()
            self._arrived.set()
            await self._wait(self._drained)
        self._raise_if_failed()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Batcher[T]]:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-flusher")
        try:
            yield self
        finally:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        try:
            while True:
                if not self._items:
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                if len(self._items) < self.max_size:
                    deadline = self._items[0][0] + self.linger
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        self._arrived.clear()
                        try:
                            await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
                        except TimeoutError:
                            pass
                        continue
                count = min(self.max_size, len(self._items))
                batch = [self._items.popleft()[1] for _ in range(count)]
                self._in_flight = count
                self._drained.set()  # room for more while this batch is handled
                try:
                    await self._handle(batch)
                finally:
                    self._in_flight = 0
                if not self._items:
                    self._drained.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            self._drained.set()
            raise

    async def _wait(self, event: asyncio.Event) -> None:
        task = self._task
        if task is None:
            raise BatcherFailed(f"{self.name}: not running")
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BatcherFailed(f"{self.name}: handling a batch failed: {self._error!r}") from self._error
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise BatcherFailed(f"{self.name}: the flusher stopped")
