"""Which DLQ a name means, and reading one: Kafka clients built from the settings (security included),
the pending span of each partition, and the records in it.

`--sink ingest` is the ingest DLQ (replayed to the ingest topic); any other name is an enabled sink's DLQ
(replayed to the sink's topic, or its first retry tier with --to retry; never to the ingest topic: the
dedupe table has seen those events already)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import KafkaSettings, Settings
from pipeline.dlq.errors import MissingTopic, UnknownSink
from pipeline.dlq.records import DeadLetter
from pipeline.dlq.stable_offsets import committed_stable
from pipeline.limits import producer_request_bytes
from pipeline.produce import acked_producer
from pipeline.topics import TopicCatalog

INGEST = "ingest"
Destination = Literal["sink", "retry"]
FETCH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DlqTarget:
    name: str  # a sink's name, or "ingest"
    dlq: str  # the DLQ topic
    destinations: dict[str, str]  # "sink" / "retry" -> topic a replay sends to
    parked: str | None  # the parking topic, if declared
    group: str  # the replay's consumer group and transactional id

    def destination(self, to: Destination) -> str:
        try:
            return self.destinations[to]
        except KeyError:
            choices = ", ".join(self.destinations)
            raise UnknownSink(f"{self.name}: no {to} topic to replay to (choose from {choices})") from None


def replay_group(app_id: str, name: str) -> str:
    return f"{app_id}.dlq-replay.{name}"


def resolve(settings: Settings, catalog: TopicCatalog, name: str) -> DlqTarget:
    group = replay_group(settings.app_id, name)
    if name == INGEST:
        parked = catalog.ingest_parked
        return DlqTarget(
            INGEST, catalog.ingest_dlq.name, {"sink": catalog.ingest.name}, parked.name if parked else None, group
        )
    if name not in catalog.sinks:
        known = ", ".join([INGEST, *catalog.sinks])
        raise UnknownSink(f"unknown sink {name!r}: the DLQs are {known} (a sink must be enabled to have one)")
    destinations = {"sink": catalog.sink(name).name}
    tiers = catalog.sink_retry(name)
    if tiers:
        destinations["retry"] = tiers[0].name
    parked_spec = catalog.sink_parked(name)
    return DlqTarget(name, catalog.sink_dlq(name).name, destinations, parked_spec.name if parked_spec else None, group)


def all_targets(settings: Settings, catalog: TopicCatalog) -> list[DlqTarget]:
    return [resolve(settings, catalog, name) for name in (INGEST, *catalog.sinks)]


ClientT = TypeVar("ClientT", AIOKafkaConsumer, AIOKafkaProducer)


async def start(client: ClientT) -> ClientT:
    """Start a client; stop it again when starting fails (no unclosed-client warnings)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


def consumer(
    kafka: KafkaSettings, group: str | None = None, *, committed_only: bool = True, client: str = "dlq"
) -> AIOKafkaConsumer:
    """A consumer for assign() (never joins the group; the group only holds committed offsets)."""
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.servers,
        group_id=group,
        client_id=f"{kafka.client_id}-{client}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        **kafka.client_kwargs(),
    )


def producer(kafka: KafkaSettings, catalog: TopicCatalog, transactional_id: str | None = None) -> AIOKafkaProducer:
    return acked_producer(
        kafka,
        client_id=f"{kafka.client_id}-dlq",
        max_request_size=producer_request_bytes(catalog),
        transactional_id=transactional_id,
    )


async def send_copy(
    producer: AIOKafkaProducer, topic: str, record: DeadLetter, partition: int | None
) -> asyncio.Future[Any]:
    """Send `record` unchanged (key, value, headers, timestamp) to `topic`; returns the delivery future."""
    future: asyncio.Future[Any] = await producer.send(
        topic,
        key=record.key,
        value=record.value,
        headers=list(record.headers),
        partition=partition,
        timestamp_ms=record.timestamp_ms,
    )
    return future


async def partitions(client: AIOKafkaConsumer, topics: Sequence[str]) -> dict[str, list[TopicPartition]]:
    """Each topic's partitions; MissingTopic when the cluster does not have it."""
    await client._client.force_metadata_update()
    found: dict[str, list[TopicPartition]] = {}
    for topic in topics:
        numbers = client.partitions_for_topic(topic)
        if not numbers:
            raise MissingTopic(f"topic {topic!r} does not exist: run `pipeline topics apply`")
        found[topic] = [TopicPartition(topic, p) for p in sorted(numbers)]
    return found


@dataclass(frozen=True)
class Span:
    """One partition of a DLQ: [start, end) is what a scan reads."""

    tp: TopicPartition
    log_start: int  # the first offset still in the topic
    committed: int  # the replay group's offset (log_start when it has none, or is below it)
    end: int  # the last stable offset when the span was taken

    @property
    def start(self) -> int:
        return self.committed

    @property
    def replayed(self) -> int:
        return max(0, self.committed - self.log_start)


async def spans(client: AIOKafkaConsumer, topic: str, group: str) -> list[Span]:
    """The partitions of `topic` from `group`'s offset (read stable: never the one from before a replay's
    transaction that has just committed; the log start when it has none or it is below) to their end now."""
    tps = (await partitions(client, [topic]))[topic]
    starts = await client.beginning_offsets(tps)
    ends = await client.end_offsets(tps)
    offsets = await committed_stable(client, group, tps)
    result = []
    for tp in tps:
        committed = offsets.get(tp)
        begin = max(starts[tp], committed or 0)
        result.append(Span(tp, starts[tp], min(begin, ends[tp]), ends[tp]))
    return result


async def scan(client: AIOKafkaConsumer, ranges: Sequence[Span]) -> AsyncIterator[DeadLetter]:
    """The records in each span, partition by partition interleaved as fetched, in offset order per partition."""
    todo = [s for s in ranges if s.start < s.end]
    if not todo:
        return
    client.assign([s.tp for s in todo])
    ends = {s.tp: s.end for s in todo}
    for s in todo:
        client.seek(s.tp, s.start)
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while ends:
        batch = await client.getmany(*ends, timeout_ms=500, max_records=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends.get(tp, -1):
                    yield DeadLetter.from_record(record)
        for tp in list(ends):
            if await client.position(tp) >= ends[tp]:
                del ends[tp]
                deadline = time.monotonic() + FETCH_TIMEOUT_S
        if ends and time.monotonic() > deadline:
            raise TimeoutError(f"could not read {sorted(str(tp) for tp in ends)} to their end")
        if batch:
            deadline = time.monotonic() + FETCH_TIMEOUT_S
