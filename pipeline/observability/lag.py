"""Topic sizes and consumer-group lag from the broker: end offsets minus beginning or committed offsets.
Used by the demo, the tests, the metrics collector (pipeline.observability.collector) and the DLQ tools.
The lag math itself (`partition_lag`, `lag_seconds`) is pure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError, NotCoordinatorError


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Records of one partition its group has not committed: from the committed offset (or, without a
    commit or below what retention left, from the first record left) up to the high watermark."""
    start = low if committed is None or committed < 0 else max(committed, low)
    return max(0, high - start)


def lag_seconds(lag: int, next_timestamp_ms: int | None, now_ms: int) -> float | None:
    """Age of the next record the group has not committed: 0 when caught up, None when unknown."""
    if lag <= 0:
        return 0.0
    if next_timestamp_ms is None or next_timestamp_ms < 0:
        return None
    return max(0.0, (now_ms - next_timestamp_ms) / 1000)


async def metadata_of(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> None:
    """Refresh `consumer`'s metadata for `topics` only, and keep its periodic refresh to them.

    A client that tracks no topic (a consumer with no subscription or assignment) asks the brokers for every
    topic of the cluster: on a cluster of thousands of partitions that response is decoded in Python on the
    loop that runs it (a worker's, for the metrics collector). Asked by name, a missing topic is created on a
    broker with ``auto.create.topics.enable``, as the worker's own consumers of these topics would; the
    one-off tools below ask for every topic instead, so that they never create one."""
    if not topics:
        return
    client = consumer._client
    client.set_topics(list(topics))
    await client.force_metadata_update()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer._client.force_metadata_update()
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def topic_size(bootstrap: str, topic: str, **client_kwargs: Any) -> int:
    """Records currently held by a topic, over all partitions (0 when the topic does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


async def topic_ends(bootstrap: str, topic: str, **client_kwargs: Any) -> dict[int, int]:
    """End offset of every partition of `topic` (empty when the topic does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()} if tps else {}
    finally:
        await consumer.stop()


async def group_offsets(bootstrap: str, group: str, **client_kwargs: Any) -> dict[TopicPartition, int]:
    """The consumer group's committed offset per partition (-1 where it has none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def group_lag(bootstrap: str, group: str, topic: str, **client_kwargs: Any) -> int | None:
    """Records of `topic` the consumer group has not committed yet; None while it has committed
    nothing on a non-empty partition."""
    try:
        committed = await group_offsets(bootstrap, group, **client_kwargs)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError):
        return None  # the group's coordinator is not ready yet: nothing is known
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    lag = 0
    for tp in tps:
        offset = committed.get(tp, -1)
        if offset < 0:
            if ends[tp] > 0:
                return None
            continue
        lag += ends[tp] - offset
    return lag


class FirstRecord(NamedTuple):
    offset: int | None  # the first record at or after the offset asked about; None: none before `end`
    end: int  # the end offset the broker gave: the last stable offset (read committed)


class RecordProbe:
    """Asks the broker which offset holds the first record at or after a given offset: one long-lived,
    group-less consumer, assigned to one partition per question. It reads committed records only, as the
    agents do: records of aborted transactions count as no record, and nothing at or beyond the last
    stable offset (an open transaction) is looked at."""

    def __init__(self, bootstrap: str, **client_kwargs: Any) -> None:
        self._kwargs = {"bootstrap_servers": bootstrap, **client_kwargs}
        self._consumer: AIOKafkaConsumer | None = None
        self._lock: asyncio.Lock | None = None

    async def first_record(self, topic: str, partition: int, offset: int, timeout: float = 10.0) -> FirstRecord:
        """The first record the broker returns reading from `offset`, and the end it read up to. An answer
        above `offset` proves the offsets in between hold no record a consumer would see (transaction
        markers, aborted or compacted records). Raises TimeoutError when the broker does not answer
        within `timeout`."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock, asyncio.timeout(timeout):
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    isolation_level="read_committed",
                    **self._kwargs,
                )
                try:
                    await consumer.start()
                except BaseException:
                    await consumer.stop()
                    raise
                self._consumer = consumer
            consumer = self._consumer
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if offset >= end:
                return FirstRecord(None, end)
            consumer.seek(tp, offset)
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                for record in batch.get(tp, []):
                    return FirstRecord(int(record.offset), end)
            return FirstRecord(None, end)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
