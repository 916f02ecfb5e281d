"""The replay group's committed offsets, read stable (OffsetFetch v7 with require_stable, KIP-447).

A replay commits its DLQ offsets inside its transaction. EndTxn returns once the commit is decided; the
markers that make those offsets visible are written after it, and the group coordinator applies them
after that. A plain OffsetFetch (aiokafka's `committed()` sends v0-v3) in that window answers the
offset from before the transaction: a replay run straight after another planned the event the last one
had re-sent, and stats counted it pending. With require_stable the coordinator answers
UNSTABLE_OFFSET_COMMIT while a transaction holds offsets of the group; this asks again until it answers.

aiokafka (0.13-0.14) declares no OffsetFetch above v3, so the v7 request and response are declared here
with its protocol types and sent with its client to the group's coordinator: the only use of aiokafka's
protocol internals in the DLQ tools. tests/unit/test_dlq_stable_offsets.py fails when they change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

__all__ = ["UnstableOffsets", "committed_stable"]

GROUP_COORDINATOR = 0
UNSTABLE_OFFSET_COMMIT = 88
NO_OFFSET = -1
# Errors after which the coordinator is looked up again (it moved, or is still loading the group).
_RELOOKUP = frozenset(
    (
        kafka_errors.NotCoordinatorForGroupError.errno,
        kafka_errors.GroupCoordinatorNotAvailableError.errno,
        kafka_errors.GroupLoadInProgressError.errno,
    )
)


class UnstableOffsets(kafka_errors.KafkaError):
    """A transaction still held the group's offsets when the deadline passed."""


class OffsetFetchResponse_v7(Response):
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")), ("partition_indexes", CompactArray(Int32)), ("tags", TaggedFields)
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):
    API_KEY = 9

    def __init__(self, group: str, tps: Sequence[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._group = group
        self._topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, sorted(parts), {}) for topic, parts in sorted(by_topic.items())
        ]

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(self._group, self._topics, True, {})


async def committed_stable(
    client: AIOKafkaConsumer, group: str, tps: Sequence[TopicPartition], timeout: float = 30.0
) -> dict[TopicPartition, int | None]:
    """Each partition's committed offset in `group` (None: none), once no transaction holds them.
    UnstableOffsets after `timeout`; the broker's error when it refuses the request."""
    kafka = client._client
    deadline = time.monotonic() + timeout
    delay = 0.01
    node: int | None = None
    while True:
        if node is None:
            node = await kafka.coordinator_lookup(GROUP_COORDINATOR, group)
        response = await kafka.send(node, StableOffsetFetchRequest(group, tps))
        codes = {response.error_code} | {p[4] for _, parts, _ in response.topics for p in parts}
        if codes & _RELOOKUP:
            node = None
        elif UNSTABLE_OFFSET_COMMIT not in codes:
            break
        if time.monotonic() + delay > deadline:
            raise UnstableOffsets(f"the offsets of group {group!r} stayed held by a transaction for {timeout:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    result: dict[TopicPartition, int | None] = {}
    for topic, parts, _ in response.topics:
        for partition, offset, _epoch, _metadata, code, _ in parts:
            if code and code != kafka_errors.UnknownTopicOrPartitionError.errno:
                raise kafka_errors.for_code(code)(f"offset fetch for {topic}[{partition}] in group {group!r}")
            result[TopicPartition(topic, partition)] = None if offset == NO_OFFSET else offset
    if response.error_code:
        raise kafka_errors.for_code(response.error_code)(f"offset fetch for group {group!r}")
    return result
