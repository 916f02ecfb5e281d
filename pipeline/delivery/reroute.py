"""Moving failed events to their retry tier or to the DLQ (where to: `routing.route_failure`).

Each produce is tried a bounded number of times, each attempt with a time limit (aiokafka waits 40 s for
the metadata of a deleted topic). What still cannot be produced is returned, so the runner can keep its
offset uncommitted, pause the sink with a growing backoff and route only those events again later.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from pipeline.delivery.consumer import ROUTE_ATTEMPT_TIMEOUT_S, ROUTE_ATTEMPTS, ROUTE_RETRY_PAUSE_S
from pipeline.delivery.items import Failure, Item, UndecodableRecord
from pipeline.delivery.routing import Route, failure_headers, route_failure
from pipeline.observability import metrics
from pipeline.sinks.settings import SinkSettings

log = structlog.get_logger("pipeline.deliver")


class RouteProducer(Protocol):
    """The producer calls routing makes (aiokafka's AIOKafkaProducer has it)."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *, headers: Any = None
    ) -> Awaitable[Any]: ...


def route_label(route: Route) -> str:
    return f"retry.{route.tier}" if route.kind == "retry" else f"dlq.{route.reason}"


class Rerouter:
    def __init__(
        self,
        settings: SinkSettings,
        producer: RouteProducer,
        *,
        tier_topics: Sequence[str],
        dlq_topic: str,
        tier_labels: Sequence[str] = (),
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt_timeout_s: float = ROUTE_ATTEMPT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.producer = producer
        self.tier_labels = list(tier_labels) or [str(i) for i in range(len(tier_topics))]  # metric label per tier
        self.tier_topics = list(tier_topics)
        self.dlq_topic = dlq_topic
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.attempt_timeout_s = attempt_timeout_s
        self.clock = clock

    def _route(self, failure: Failure, now_ms: int, retry_after: float | None) -> Route:
        if isinstance(failure.error, UndecodableRecord):
            return Route("dlq", reason="undecodable")
        return route_failure(
            self.settings.retry,
            failure.item.attempts,
            fatal=not failure.error.retryable,
            now_ms=now_ms,
            retry_after_s=retry_after,
            rng=self.rng,
        )

    async def _send(self, failure: Failure, route: Route, now: datetime) -> None:
        item = failure.item
        topic = self.tier_topics[route.tier] if route.kind == "retry" and route.tier is not None else self.dlq_topic
        headers = failure_headers(
            list(item.record.headers or ()),
            sink=self.name,
            event_hash=item.event_hash,
            topic=item.tp.topic,
            partition=item.tp.partition,
            offset=item.offset,
            attempts=item.attempts,
            error=failure.error,
            route=route,
            now=now,
        )

        async def produce() -> None:
            delivery = await self.producer.send(topic, value=item.record.value, key=item.record.key, headers=headers)
            await delivery

        await asyncio.wait_for(produce(), self.attempt_timeout_s)

    async def route(
        self, failures: Sequence[Failure], retry_after: float | None
    ) -> tuple[list[Item], list[Failure], BaseException | None]:
        """(routed items, failures that could not be produced, the last produce error)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        now_ms = int(now.timestamp() * 1000)
        routes = [(f, self._route(f, now_ms, retry_after)) for f in failures]
        pending = routes
        routed: list[tuple[Failure, Route]] = []
        last_error: BaseException | None = None
        for attempt in range(ROUTE_ATTEMPTS):
            if attempt:
                await self.sleep(ROUTE_RETRY_PAUSE_S)
            results = await asyncio.gather(*(self._send(f, r, now) for f, r in pending), return_exceptions=True)
            still: list[tuple[Failure, Route]] = []
            for (failure, route), outcome in zip(pending, results, strict=True):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                if isinstance(outcome, BaseException):
                    last_error = outcome
                    still.append((failure, route))
                else:
                    routed.append((failure, route))
            pending = still
            if not pending:
                break
        self._report(routed)
        return [f.item for f, _ in routed], [f for f, _ in pending], last_error

    def _report(self, routed: list[tuple[Failure, Route]]) -> None:
        if not routed:
            return
        counts: dict[str, int] = {}
        for _, route in routed:
            label = route_label(route)
            counts[label] = counts.get(label, 0) + 1
            if route.kind == "retry":
                metrics.SINK_RETRIES.labels(self.name, self.tier_labels[route.tier or 0]).inc()
            else:
                metrics.SINK_DLQ.labels(self.name, route.reason or "").inc()
        first, item = routed[0][0].error, routed[0][0].item
        level = log.error if any(k.startswith("dlq") for k in counts) else log.warning
        level(
            "delivery failed",
            sink=self.name,
            routed=counts,
            error_class=type(first).__name__,
            error=str(first),
            topic=item.tp.topic,
            partition=item.tp.partition,
            offset=item.record.offset,
            event_hash=item.event_hash,
        )
