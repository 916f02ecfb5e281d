"""Ingest agent: validate each message; valid events go to the by-hash topic keyed by content hash,
anything else to the ingest DLQ with the reason in its headers (pipeline.ingest.route decides, and no
exception of one message escapes it). Nothing is dropped.

It works a group of batches at a time (a batch is one partition's records of one fetch; a group is every
batch queued when the agent is ready, agents.consumer.Pipelined.groups): route every message, produce the
group's output, wait for its acknowledgements once, then ack the batches' offsets for the commit."""

from __future__ import annotations

from typing import Any

import structlog
from faust.types import StreamT

from agents.app import Pipeline
from agents.consumer import Pipelined
from pipeline.ingest import Origin, route
from pipeline.limits import producer_request_bytes
from pipeline.observability import metrics
from pipeline.produce import Record

log = structlog.get_logger("pipeline.ingest")


def register(pipeline: Pipeline) -> None:
    catalog, settings = pipeline.catalog, pipeline.settings
    source = pipeline.topic(catalog.ingest)
    by_hash, dlq = catalog.by_hash.name, catalog.ingest_dlq.name
    max_record_bytes = producer_request_bytes(catalog)

    async def ingest(stream: StreamT[Any]) -> None:
        producer = pipeline.producer
        async with producer, Pipelined(stream) as pipe:
            async for group in pipe.groups():
                out: list[Record] = []
                accepted = 0
                for message in (message for batch in group for message in batch.records):
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
                        accepted += 1
                        out.append(Record(by_hash, routed.key, routed.value, routed.headers))
                        continue
                    metrics.REJECTED.labels(routed.rejection.reason).inc()
                    log.warning(
                        "event rejected",
                        reason=routed.rejection.reason,
                        error=routed.rejection.message,
                        topic=origin.topic,
                        partition=origin.partition,
                        offset=origin.offset,
                    )
                    out.append(Record(dlq, routed.key, routed.value, routed.headers))
                await pipe.send(group, producer.send(out))
                metrics.INGESTED.inc(accepted)

    pipeline.app.agent(source, name="ingest", concurrency=1)(ingest)
