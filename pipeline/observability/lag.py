"""Topic sizes and consumer-group lag from the broker: end offsets minus beginning or committed offsets.
Used by the demo, the tests and (later) the metrics and DLQ tools."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError, NotCoordinatorError


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


async def group_lag(bootstrap: str, group: str, topic: str, **client_kwargs: Any) -> int | None:
    """Records of `topic` the consumer group has not committed yet; None while it has committed
    nothing on a non-empty partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs)
    await consumer.start()
    try:
        try:
            committed = await admin.list_consumer_group_offsets(group)
        except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError):
            return None  # the group's coordinator is not ready yet: nothing is known
        tps = await _partitions(consumer, topic)
        ends = await consumer.end_offsets(tps) if tps else {}
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            if meta is None or meta.offset < 0:
                if ends[tp] > 0:
                    return None
                continue
            lag += ends[tp] - meta.offset
        return lag
    finally:
        await consumer.stop()
        await admin.close()
