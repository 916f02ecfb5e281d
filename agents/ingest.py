"""Ingest agent: validate each message; valid events go to the by-hash topic keyed by content hash,
anything else to the ingest DLQ with the reason in its headers (pipeline.ingest.route decides, and no
exception of one message escapes it). Nothing is dropped."""

from __future__ import annotations

from typing import Any

import structlog
from faust.types import StreamT

from agents.acks import manual_acks, produced_then_acked
from agents.app import Pipeline
from pipeline.ingest import Origin, route
from pipeline.limits import producer_request_bytes
from pipeline.observability import metrics

log = structlog.get_logger("pipeline.ingest")


def register(pipeline: Pipeline) -> None:
    catalog, settings = pipeline.catalog, pipeline.settings
    source = pipeline.topic(catalog.ingest)
    by_hash = pipeline.topic(catalog.by_hash)
    dlq = pipeline.topic(catalog.ingest_dlq)
    max_record_bytes = producer_request_bytes(catalog)

    async def ingest(stream: StreamT[Any]) -> None:
        manual = manual_acks(stream)
        batcher = produced_then_acked(manual, max_size=settings.ingest_batch_size, name="ingest")
        async with batcher.running():
            async for event in manual.events():
                message = event.message
                origin = Origin(message.topic, message.partition, message.offset)
                routed = route(
                    message.key,
                    message.value,
                    message.headers,
                    origin,
                    max_event_bytes=settings.max_event_bytes,
                    max_record_bytes=max_record_bytes,
                )
                if routed.rejection is None:
                    metrics.INGESTED.inc()
                    topic = by_hash
                else:
                    metrics.REJECTED.labels(routed.rejection.reason).inc()
                    log.warning(
                        "event rejected",
                        reason=routed.rejection.reason,
                        error=routed.rejection.message,
                        topic=origin.topic,
                        partition=origin.partition,
                        offset=origin.offset,
                    )
                    topic = dlq
                future = await topic.send(key=routed.key, value=routed.value, headers=routed.headers)
                await batcher.add((event, [future]))

    pipeline.app.agent(source, name="ingest", concurrency=1)(ingest)
