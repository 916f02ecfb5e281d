"""Dedupe agent: the by-hash topic is keyed by content hash, so every copy of an event reaches the same
partition and the same RocksDB-backed table entry, whichever ingest partition it came from. Unique
events fan out to the topic of every enabled sink; duplicates within IDEMPOTENCY_WINDOW_SEC are dropped
(and counted). A timer removes entries older than the window from the local store; the changelog
topic's retention drops them from Kafka, so neither grows without bound. The timer finds them in a time
bucketed index (pipeline.expiry_index), so a sweep costs what expires, not what the table holds.

The agent works a group of batches at a time (agents.consumer: every batch queued, one per partition and
fetch): each by-hash record is decided against the table's local RocksDB store, and the group's fan-out
records and its table entries' changelog records are produced together; the batches are acked once Kafka
acknowledged all of them, so an offset is never committed before what its record caused (including its
changelog entry) is durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from faust.types import StreamT

from agents.app import Pipeline
from agents.consumer import (
    Batch,
    Pipelined,
    TableStore,
    persist_changelog_offset,
    recovery_done,
    store_of,
)
from pipeline.dedupe import Decision, Seen, decide, is_expired
from pipeline.events import Rejection
from pipeline.expiry_index import ExpiryIndex
from pipeline.ingest import Origin, dead_letter
from pipeline.observability import metrics
from pipeline.pacing import CHUNK, Pacer
from pipeline.produce import BatchProducer, Record

log = structlog.get_logger("pipeline.dedupe")


def register(pipeline: Pipeline) -> None:
    app, catalog, settings = pipeline.app, pipeline.catalog, pipeline.settings
    window_ms = settings.idempotency_window_sec * 1000
    source = pipeline.topic(catalog.by_hash)
    # Sink topics with the by-hash topic's partition count get each event on the same partition number
    # (both are the default partitioner's choice for the hash), without hashing the key again.
    outputs = [
        (spec.name, spec.partitions == catalog.by_hash.partitions)
        for spec in (catalog.sink(sink.name) for sink in settings.enabled_sinks())
    ]
    dlq = catalog.ingest_dlq.name
    table = app.Table(
        "dedupe",
        default=None,
        partitions=catalog.by_hash.partitions,
        # JSON keys and values: Faust's changelog recovery decodes with the topic's JSON codec.
        key_type=str,
        options={
            "block_cache_size": settings.dedupe_block_cache_bytes,
            "block_cache_compressed_size": settings.dedupe_block_cache_bytes,
            "write_buffer_size": settings.dedupe_write_buffer_bytes,
            "max_write_buffer_number": 2,
        },
        help="event hash -> first sighting {t, p, o} on the by-hash topic",
    )
    changelog = table.changelog_topic.get_topic_name()
    if changelog != catalog.dedupe_changelog.name:
        raise ValueError(
            f"topics.yaml names the dedupe changelog {catalog.dedupe_changelog.name!r} but Faust uses "
            f"{changelog!r}; the template must be '{{app_id}}-dedupe-changelog'"
        )

    sweep_every = max(1.0, min(60.0, settings.idempotency_window_sec / 10))
    index = ExpiryIndex(bucket_ms=int(sweep_every * 1000))
    refile = asyncio.Event()  # set after an assignment: file the entries restored from the changelog

    async def dedupe(stream: StreamT[Any]) -> None:
        producer = pipeline.producer
        store = TableStore(table)
        async with producer, Pipelined(stream) as pipe:
            async for group in pipe.groups():
                out = [record for batch in group for record in decide_batch(store, batch)]
                await pipe.send(group, send(producer, {batch.tp.partition for batch in group}, out))

    async def send(producer: BatchProducer, partitions: set[int], out: list[Record]) -> None:
        written = await producer.send(out)
        for partition in partitions:
            if (changelog, partition) in written:
                persist_changelog_offset(table, partition, written[(changelog, partition)])

    def decide_batch(store: TableStore, batch: Batch) -> list[Record]:
        """The records `batch` causes: fan-out of what is new (and its table entry on the changelog), nothing
        for a duplicate, a dead letter for a record that is not the pipeline's. Table reads and writes are
        local (the changelog record goes out with the batch and is acknowledged with it)."""
        partition = batch.tp.partition
        out: list[Record] = []
        forwarded = redelivered = duplicates = 0
        now_ms = int(time.time() * 1000)
        db = store.writes(partition)
        for message in batch.records:
            key = message.key
            table_key = _table_key(key)
            if table_key is None:  # not written by ingest (a replay or import tool): dead-letter it
                why = Rejection("unprocessable", "a by-hash record's key must be the event hash (UTF-8 text)")
                origin = Origin(message.topic, message.partition, message.offset)
                routed = dead_letter(key, message.value, message.headers, origin, why)
                log.warning(
                    "by-hash record without a valid key",
                    topic=origin.topic,
                    partition=origin.partition,
                    offset=origin.offset,
                )
                out.append(Record(dlq, routed.key, routed.value, routed.headers))
                continue
            raw_key = store.key(table_key)
            decision = decide(
                Seen.from_bytes(db.get(raw_key)),
                now_ms=now_ms,
                window_ms=window_ms,
                partition=message.partition,
                offset=message.offset,
            )
            if decision is Decision.DUPLICATE:
                duplicates += 1
                continue
            headers = list(message.headers or ())
            for topic, same_partitions in outputs:
                out.append(Record(topic, key, message.value, headers, partition if same_partitions else None))
            if decision is Decision.FORWARD:
                # A redelivery of this same record is recognised by its partition and offset and forwarded
                # again (see pipeline.dedupe).
                raw_value = Seen(now_ms, message.partition, message.offset).to_bytes()
                db.put(raw_key, raw_value)
                index.add(table_key, now_ms)
                out.append(Record(changelog, raw_key, raw_value, (), partition))
                forwarded += 1
            else:
                redelivered += 1
        db.write()
        metrics.DUPLICATES.inc(duplicates)
        metrics.FORWARDED.inc(forwarded)
        metrics.REDELIVERED.inc(redelivered)
        return out

    app.agent(source, name="dedupe", concurrency=1)(dedupe)

    async def expire_dedupe_entries() -> None:
        """Remove the entries of every time bucket older than the window (a sweep costs what expires). After
        an assignment, entries restored from the changelog are filed first (one pass over the table). Both
        passes keep to a twentieth of the loop (pipeline.pacing): the agents go on meanwhile."""
        store, pacer = store_of(table), Pacer()
        if refile.is_set():
            if not recovery_done(app):
                return
            refile.clear()
            index.clear()
            if not await file_entries(index, store.items(), pacer, interrupted=refile.is_set):
                return  # assigned again meanwhile: the next sweep starts over
        expired = await sweep(index, store, int(time.time() * 1000), window_ms, pacer)
        if expired:
            metrics.EXPIRED.inc(expired)
            log.info("dedupe entries expired", count=expired, window_sec=settings.idempotency_window_sec)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _refile_after_assignment(sender: Any, assigned: set[Any], **_: Any) -> None:
        refile.set()

    app.timer(sweep_every, name="dedupe-expiry")(expire_dedupe_entries)


async def file_entries(
    index: ExpiryIndex, entries: Iterable[tuple[str, Any]], pacer: Pacer, *, interrupted: Callable[[], bool]
) -> bool:
    """File every (key, stored value) of `entries` in `index` by its first sighting, pausing every CHUNK
    entries (`pacer`); False when `interrupted()` turned true at a pause (the pass stopped there)."""
    for n, (key, value) in enumerate(entries):
        seen = Seen.from_json(value)
        index.add(key, seen.first_seen_ms if seen is not None else 0)
        if n % CHUNK == CHUNK - 1:
            await pacer.pause()
            if interrupted():
                return False
    return True


async def sweep(index: ExpiryIndex, store: Any, now_ms: int, window_ms: int, pacer: Pacer) -> int:
    """Remove from `store` the entries of `index`'s due buckets that are still expired (one forwarded again
    after it expired is filed anew), pausing every CHUNK keys; the number removed."""
    expired = 0
    for n, key in enumerate(index.pop_due(now_ms=now_ms, window_ms=window_ms)):
        seen = Seen.from_json(store.get(key))
        if seen is not None and not is_expired(seen, now_ms=now_ms, window_ms=window_ms):
            index.add(key, seen.first_seen_ms)
        elif store.pop(key, None) is not None:
            expired += 1
        if n % CHUNK == CHUNK - 1:
            await pacer.pause()
    return expired


def _table_key(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None
