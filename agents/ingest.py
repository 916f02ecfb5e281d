"""Ingest agent: validate each message; valid events go to the by-hash topic keyed by content hash,
anything else to the ingest DLQ with the reason in its headers. Nothing is dropped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from faust.types import StreamT

from agents.acks import manual_acks, produced_then_acked
from agents.app import Pipeline
from pipeline import headers as h
from pipeline.events import Rejection, parse_event
from pipeline.observability import metrics

log = structlog.get_logger("pipeline.ingest")


def register(pipeline: Pipeline) -> None:
    catalog, settings = pipeline.catalog, pipeline.settings
    source = pipeline.topic(catalog.ingest)
    by_hash = pipeline.topic(catalog.by_hash)
    dlq = pipeline.topic(catalog.ingest_dlq)

    async def ingest(stream: StreamT[Any]) -> None:
        manual = manual_acks(stream)
        batcher = produced_then_acked(manual, max_size=settings.ingest_batch_size, name="ingest")
        async with batcher.running():
            async for event in manual.events():
                message = event.message
                origin = {
                    h.ORIGIN_TOPIC: message.topic,
                    h.ORIGIN_PARTITION: message.partition,
                    h.ORIGIN_OFFSET: message.offset,
                }
                try:
                    accepted = parse_event(
                        message.value,
                        settings.max_event_bytes,
                        h.header_value(message.headers, h.IDEMPOTENCY_KEY),
                    )
                except Rejection as rejection:
                    metrics.REJECTED.labels(rejection.reason).inc()
                    log.warning(
                        "event rejected",
                        reason=rejection.reason,
                        error=rejection.message,
                        **_origin_fields(origin),
                    )
                    headers = h.merge(
                        message.headers,
                        {
                            **origin,
                            h.ERROR_REASON: rejection.reason,
                            h.ERROR_MESSAGE: rejection.message,
                            h.FAILED_AT: datetime.now(UTC).isoformat(),
                        },
                    )
                    future = await dlq.send(key=message.key, value=message.value, headers=headers)
                    await batcher.add((event, [future]))
                    continue
                metrics.INGESTED.inc()
                headers = h.merge(message.headers, {**origin, h.EVENT_HASH: accepted.event_hash})
                future = await by_hash.send(key=accepted.event_hash.encode(), value=accepted.body, headers=headers)
                await batcher.add((event, [future]))

    pipeline.app.agent(source, name="ingest", concurrency=1)(ingest)


def _origin_fields(origin: dict[str, Any]) -> dict[str, Any]:
    return {
        "topic": origin[h.ORIGIN_TOPIC],
        "partition": origin[h.ORIGIN_PARTITION],
        "offset": origin[h.ORIGIN_OFFSET],
    }
