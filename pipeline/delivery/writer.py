"""Writing one round's events to the sink: batch_size chunks, at most max_concurrent_requests at once
(half_open_max_inflight probes while the breaker is half-open), the bandwidth and event-rate limits, a
time limit per write, and bisection of a batch the sink rejects so only its poison events fail.

Every write is one request to the breaker: it takes a permit and ends it with exactly one verdict, so the
breaker's failure-rate window counts requests. A chunk that gets no permit (the breaker opened meanwhile),
or would start after the round's write window, is left unattempted: it is rewound and written next round.

Rate limits are paid after the write: a write starts once the buckets have no debt, then charges them.
Waiting for the debt of the round's last write happens between rounds, while the loop keeps polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from pipeline.delivery.consumer import write_window_s
from pipeline.delivery.items import Failure, Item
from pipeline.observability import metrics
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.reliability.ratelimit import TokenBucket
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, Sink, SinkError, SinkRecord, SinkTimeout
from pipeline.sinks.settings import SinkSettings

log = structlog.get_logger("pipeline.deliver")

BURST_S = 0.25  # the credit a rate limit's bucket may hold, in seconds of its rate


@dataclass
class WriteResult:
    written: list[Item] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    unattempted: list[Item] = field(default_factory=list)
    retry_after: float | None = None

    @property
    def retryable_only(self) -> bool:
        """Nothing was written and every failure is worth retrying (the sink is down, not the data)."""
        return not self.written and all(f.error.retryable for f in self.failures)


class Writer:
    def __init__(
        self,
        sink: Sink,
        settings: SinkSettings,
        breaker: CircuitBreaker,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.name = settings.name
        self.breaker = breaker
        self.clock = clock
        self.sleep = sleep
        self.buckets: list[tuple[TokenBucket, Callable[[list[SinkRecord]], float]]] = []
        # Pay-after buckets: a write's debt is paid while it is written and while the next one waits, so they
        # need little credit; BURST_S of it covers the gap between two rounds (a poll, the linger) without
        # letting a burst after an idle spell push the rate over a window far past the limit.
        for rate, amount in (
            (settings.flush_bandwidth_bytes_per_sec, sink.wire_size),
            (settings.max_events_per_sec, len),
        ):
            if rate:
                self.buckets.append((TokenBucket(rate, capacity=rate * BURST_S), amount))
        self._throttle = asyncio.Lock()

    def concurrency(self) -> int:
        """Requests in flight at once: `max_concurrent_requests`, and while the breaker is not closed no more
        than its `half_open_max_inflight` probes."""
        cap = self.settings.max_concurrent_requests
        if self.breaker.state is BreakerState.CLOSED:
            return cap
        return min(cap, self.settings.circuit_breaker.half_open_max_inflight)

    def throttle_wait(self) -> float:
        """Seconds until the rate limits allow the next write."""
        return max((bucket.wait_time() for bucket, _ in self.buckets), default=0.0)

    async def write(self, items: list[Item]) -> WriteResult:
        result = WriteResult()
        if not items:
            return result
        window_end = self.clock() + write_window_s(self.settings)
        size = self.settings.batch_size
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        slots = asyncio.Semaphore(max(1, self.concurrency()))

        async def one(chunk: list[Item]) -> None:
            async with slots:
                await self._write(chunk, result, window_end)

        if len(chunks) == 1:
            await one(chunks[0])
        else:
            await asyncio.gather(*(one(chunk) for chunk in chunks))
        return result

    async def _wait_for_limits(self, records: list[SinkRecord], window_end: float) -> bool:
        """Wait out the rate limits' debt and charge this write; False when that would pass the window."""
        if not self.buckets:
            return self.clock() < window_end
        async with self._throttle:
            wait = self.throttle_wait()
            if self.clock() + wait >= window_end:
                return False
            if wait > 0:
                await self.sleep(wait)
            for bucket, amount in self.buckets:
                bucket.charge(amount(records))
        return True

    async def _write(self, items: list[Item], result: WriteResult, window_end: float) -> None:
        records = [SinkRecord(event_hash=i.event_hash, body=i.record.value or b"") for i in items]
        if not await self._wait_for_limits(records, window_end):
            result.unattempted.extend(items)
            return
        permit = self.breaker.acquire()
        if permit is None:
            result.unattempted.extend(items)
            return
        bisect = False
        async with permit:
            started = time.monotonic()
            try:
                written = await asyncio.wait_for(self.sink.write(records), self.settings.retry.timeout_ms / 1000)
            except TimeoutError:
                permit.failure()
                self._fail(items, SinkTimeout(f"write of {len(items)} events took longer than timeout_ms"), result)
                return
            except FatalSinkError as exc:
                permit.ignored()  # the data's fault, not the sink's
                if len(items) == 1:
                    self._fail(items, exc, result)
                    return
                bisect = True
            except SinkError as exc:
                permit.failure() if exc.retryable else permit.ignored()
                self._fail(items, exc, result)
                return
            except Exception as exc:  # a bug or an unclassified error: never lose the events over it
                permit.failure()
                log.exception("unclassified sink error", sink=self.name)
                self._fail(items, RetryableSinkError(f"{type(exc).__name__}: {exc}"), result)
                return
            else:
                permit.success()
                result.written.extend(items)
                metrics.SINK_WRITE_SECONDS.labels(self.name).observe(time.monotonic() - started)
                metrics.SINK_BATCH_SIZE.labels(self.name).observe(len(items))
                metrics.SINK_WRITTEN.labels(self.name).inc(written)
        if bisect:
            middle = len(items) // 2
            await self._write(items[:middle], result, window_end)
            await self._write(items[middle:], result, window_end)

    def _fail(self, items: list[Item], error: SinkError, result: WriteResult) -> None:
        metrics.SINK_ERRORS.labels(self.name, type(error).__name__).inc()
        if isinstance(error, SinkTimeout):
            metrics.SINK_TIMEOUTS.labels(self.name).inc()
        if error.retryable and error.retry_after is not None:
            result.retry_after = max(result.retry_after or 0.0, error.retry_after)
        result.failures.extend(Failure(item, error) for item in items)
