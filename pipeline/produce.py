"""Producing a batch of records and waiting for its acknowledgements once.

The agents hand over every record a batch of input caused (forwards, fan-out, dead letters); they are
grouped by topic and partition into record batches (aiokafka's `create_batch`/`send_batch`: no per-record
future, partitioner call or accumulator round trip), sent, and `send` returns once Kafka acknowledged all of
them (acks=all, idempotent producer) or raises. Partitions are those of Kafka's default partitioner
(murmur2 of the key), so the by-hash topic and the dedupe table stay co-partitioned with any other client.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer

from pipeline.config import KafkaSettings

# Producer settings for a backlog: a batch per partition fills up instead of leaving after a few records.
LINGER_MS = 5
MAX_BATCH_BYTES = 512 * 1024


class Record(NamedTuple):  # a tuple: the agents build one per record they produce
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    partition: int | None = None  # None: the default partitioner's choice for the key


def partition_for(key: bytes | None, partitions: int, fallback: int = 0) -> int:
    """Kafka's default partitioner for a keyed record (Java clients, aiokafka and Faust agree)."""
    if not key:
        return fallback % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) as an unsigned 32-bit int: the same
    value as aiokafka.partitioner.murmur2, in about 60% of its time (the words are unpacked at once and
    only the products are masked). Every keyed record the pipeline produces goes through it."""
    length = len(data)
    words = _WORDS.get(length >> 2)
    if words is None:
        words = _WORDS[length >> 2] = struct.Struct(f"<{length >> 2}I")
    h = 0x9747B28C ^ length
    for k in words.unpack_from(data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def acked_producer(
    kafka: KafkaSettings, *, client_id: str, max_request_size: int, **overrides: Any
) -> AIOKafkaProducer:
    """The pipeline's producer (not started): acks=all, idempotent, a short linger, the cluster's security
    settings, and `max_request_size` from pipeline.limits. Every producer of the pipeline is one of these."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": LINGER_MS,
        "max_request_size": max_request_size,
        **kafka.client_kwargs(),
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


class BatchProducer:
    def __init__(self, kafka: KafkaSettings, *, client_id: str, max_request_size: int, **overrides: Any) -> None:
        self._producer = acked_producer(
            kafka,
            client_id=client_id,
            max_request_size=max_request_size,
            **{"max_batch_size": MAX_BATCH_BYTES, **overrides},
        )
        self._partitions: dict[str, int] = {}
        self._spread = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> BatchProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def partitions(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            found = await self._producer.partitions_for(topic)
            count = self._partitions[topic] = len(found)
        return count

    async def send(self, records: Sequence[Record]) -> dict[tuple[str, int], int]:
        """Produce `records` (in order per partition) and wait until Kafka acknowledged every one. Returns the
        offset of the last record written per (topic, partition)."""
        if not records:
            return {}
        builders: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        counts: list[int] = []
        keyed = {record.topic for record in records if record.partition is None}
        partitions = {topic: await self.partitions(topic) for topic in keyed}
        for record in records:
            partition = record.partition
            if partition is None:
                self._spread += 1
                partition = partition_for(record.key, partitions[record.topic], self._spread)
            where = (record.topic, partition)
            builder = builders.get(where)
            if builder is None:
                builder = builders[where] = self._producer.create_batch()
            headers = record.headers
            if type(headers) is not list:  # aiokafka's record builder takes lists only
                headers = list(headers)
            if builder.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                counts.append(builder.record_count())
                futures.append(await self._producer.send_batch(builder, record.topic, partition=partition))
                builder = builders[where] = self._producer.create_batch()
                if builder.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                    raise ValueError(f"a record for {record.topic} is larger than a batch may be")
        for (topic, partition), builder in builders.items():
            if builder.record_count():
                counts.append(builder.record_count())
                futures.append(await self._producer.send_batch(builder, topic, partition=partition))
        last: dict[tuple[str, int], int] = {}
        for metadata, count in zip(await asyncio.gather(*futures), counts, strict=True):
            where = (metadata.topic, metadata.partition)
            last[where] = max(last.get(where, -1), metadata.offset + count - 1)
        return last
