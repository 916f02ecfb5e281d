"""Dedupe agent: the by-hash topic is keyed by content hash, so every copy of an event reaches the same
partition and the same RocksDB-backed table entry, whichever ingest partition it came from. Unique
events fan out to the topic of every enabled sink; duplicates within IDEMPOTENCY_WINDOW_SEC are dropped
(and counted). A timer removes entries older than the window from the local store; the changelog
topic's retention drops them from Kafka, so neither grows without bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from faust.types import StreamT

from agents.acks import manual_acks, produced_then_acked
from agents.app import Pipeline
from pipeline.dedupe import Decision, Seen, decide, is_expired
from pipeline.events import Rejection
from pipeline.ingest import Origin, dead_letter
from pipeline.observability import metrics

log = structlog.get_logger("pipeline.dedupe")


def register(pipeline: Pipeline) -> None:
    app, catalog, settings = pipeline.app, pipeline.catalog, pipeline.settings
    window_ms = settings.idempotency_window_sec * 1000
    source = pipeline.topic(catalog.by_hash)
    outputs = [pipeline.topic(catalog.sink(sink.name)) for sink in settings.enabled_sinks()]
    dlq = pipeline.topic(catalog.ingest_dlq)
    table = app.Table(
        "dedupe",
        default=None,
        partitions=catalog.by_hash.partitions,
        # JSON keys and values: Faust's changelog recovery decodes with the topic's JSON codec.
        key_type=str,
        help="event hash -> first sighting {t, p, o} on the by-hash topic",
    )
    changelog = table.changelog_topic.get_topic_name()
    if changelog != catalog.dedupe_changelog.name:
        raise ValueError(
            f"topics.yaml names the dedupe changelog {catalog.dedupe_changelog.name!r} but Faust uses "
            f"{changelog!r}; the template must be '{{app_id}}-dedupe-changelog'"
        )

    async def dedupe(stream: StreamT[Any]) -> None:
        manual = manual_acks(stream)
        batcher = produced_then_acked(manual, max_size=settings.ingest_batch_size, name="dedupe")
        async with batcher.running():
            async for event in manual.events():
                message = event.message
                key = message.key
                table_key = _table_key(key)
                if table_key is None:  # not written by ingest (a replay or import tool): dead-letter it
                    why = Rejection("unprocessable", "a by-hash record's key must be the event hash (UTF-8 text)")
                    origin = Origin(message.topic, message.partition, message.offset)
                    routed = dead_letter(key, message.value, message.headers, origin, why)
                    log.warning("by-hash record without a valid key", **vars(origin))
                    future = await dlq.send(key=routed.key, value=routed.value, headers=routed.headers)
                    await batcher.add((event, [future]))
                    continue
                decision = decide(
                    Seen.from_json(table.get(table_key)),
                    now_ms=int(time.time() * 1000),
                    window_ms=window_ms,
                    partition=message.partition,
                    offset=message.offset,
                )
                if decision is Decision.DUPLICATE:
                    metrics.DUPLICATES.inc()
                    await batcher.add((event, []))
                    continue
                futures = [await topic.send(key=key, value=message.value, headers=message.headers) for topic in outputs]
                if decision is Decision.FORWARD:
                    # Written after the sends are queued; a redelivery of this same record is recognised
                    # by its partition and offset and forwarded again (see pipeline.dedupe).
                    table[table_key] = Seen(int(time.time() * 1000), message.partition, message.offset).to_json()
                    metrics.FORWARDED.inc()
                else:
                    metrics.REDELIVERED.inc()
                await batcher.add((event, futures))

    app.agent(source, name="dedupe", concurrency=1)(dedupe)

    sweep_every = max(1.0, min(60.0, settings.idempotency_window_sec / 10))

    async def expire_dedupe_entries() -> None:
        now_ms = int(time.time() * 1000)
        expired: list[Any] = []
        for index, (key, value) in enumerate(table.data.items()):
            seen = Seen.from_json(value)
            if seen is None or is_expired(seen, now_ms=now_ms, window_ms=window_ms):
                expired.append(key)
            if index % 1000 == 999:
                await asyncio.sleep(0)
        for key in expired:
            table.data.pop(key, None)
        if expired:
            metrics.EXPIRED.inc(len(expired))
            log.info("dedupe entries expired", count=len(expired), window_sec=settings.idempotency_window_sec)

    app.timer(sweep_every, name="dedupe-expiry")(expire_dedupe_entries)


def _table_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None
