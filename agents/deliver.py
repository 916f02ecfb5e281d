"""Sink agents: one per enabled sink, reading that sink's topic in batches (size and linger bound),
writing each batch idempotently and acknowledging its offsets only after the write succeeded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from faust.types import EventT, StreamT

from agents.acks import ack_all, manual_acks
from agents.app import Pipeline
from pipeline import headers as h
from pipeline.batching import Batcher
from pipeline.observability import metrics
from pipeline.reliability.backoff import delay_seconds
from pipeline.sinks.base import Sink, SinkError, SinkRecord, SinkTimeout
from pipeline.sinks.factory import create_sink
from pipeline.sinks.settings import SinkSettings

log = structlog.get_logger("pipeline.deliver")


def register(pipeline: Pipeline) -> None:
    for sink_settings in pipeline.settings.enabled_sinks():
        _register_sink(pipeline, sink_settings)


def _register_sink(pipeline: Pipeline, settings: SinkSettings) -> None:
    topic = pipeline.topic(pipeline.catalog.sink(settings.name))

    async def deliver(stream: StreamT[Any]) -> None:
        manual = manual_acks(stream)
        sink = create_sink(settings)
        await _until_done(sink, settings, "open", sink.open)

        async def write(batch: list[EventT[Any]]) -> None:
            records = [_record(event) for event in batch]
            await _until_done(sink, settings, "write", lambda: _timed_write(sink, records))
            await ack_all(manual, batch)

        batcher: Batcher[EventT[Any]] = Batcher(
            write,
            max_size=settings.batch_size,
            linger=settings.linger_ms / 1000,
            name=f"deliver-{settings.name}",
        )
        try:
            async with batcher.running():
                async for event in manual.events():
                    await batcher.add(event)
        finally:
            await sink.close()

    pipeline.app.agent(topic, name=f"deliver-{settings.name}", concurrency=1)(deliver)


def _record(event: EventT[Any]) -> SinkRecord:
    message = event.message
    key = message.key.decode() if message.key else h.header_value(message.headers, h.EVENT_HASH)
    if not key or message.value is None:
        raise ValueError(f"record without event hash at {message.topic}[{message.partition}]@{message.offset}")
    return SinkRecord(event_hash=key, body=message.value)


async def _timed_write(sink: Sink, records: list[SinkRecord]) -> None:
    started = time.monotonic()
    written = await sink.write(records)
    metrics.SINK_WRITE_SECONDS.labels(sink.name).observe(time.monotonic() - started)
    metrics.SINK_WRITTEN.labels(sink.name).inc(written)
    log.debug("batch written", sink=sink.name, events=len(records), new=written)


async def _until_done(sink: Sink, settings: SinkSettings, what: str, action: Any) -> None:
    """Retry `action` in place until it succeeds, with the sink's backoff between attempts.

    Interim behaviour: the events wait in Kafka (their offsets stay uncommitted) while the sink is down.
    Retry tiers, the circuit breaker and the sink DLQ (the reliability issue) replace this loop."""
    attempt = 0
    while True:
        try:
            await action()
            if attempt:
                log.info("sink recovered", sink=sink.name, action=what, attempts=attempt + 1)
            return
        except SinkError as exc:
            error = exc
        except (TimeoutError, OSError) as exc:
            error = SinkError(f"{type(exc).__name__}: {exc}")
        metrics.SINK_ERRORS.labels(sink.name, type(error).__name__).inc()
        if isinstance(error, SinkTimeout):
            metrics.SINK_TIMEOUTS.labels(sink.name).inc()
        delay = delay_seconds(settings.retry, min(attempt, 30))
        log.warning(
            "sink call failed; will retry",
            sink=sink.name,
            action=what,
            error_class=type(error).__name__,
            error=str(error),
            retryable=error.retryable,
            attempt=attempt + 1,
            retry_in_sec=round(delay, 3),
        )
        attempt += 1
        await asyncio.sleep(delay)
