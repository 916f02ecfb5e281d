"""Contract tests of pipeline/dlq/stable_offsets.py: the OffsetFetch v7 request it declares with aiokafka's
protocol types encodes as Kafka's protocol spec says, its response decodes, and the read asks again while
the coordinator answers UNSTABLE_OFFSET_COMMIT (or has moved). They fail when the pinned aiokafka changes
the protocol classes, the version choice or the client calls the module relies on."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors

from pipeline.dlq import stable_offsets
from pipeline.dlq.stable_offsets import (
    OffsetFetchRequest_v7,
    OffsetFetchResponse_v7,
    StableOffsetFetchRequest,
    UnstableOffsets,
    committed_stable,
)

TPS = [TopicPartition("t", 1), TopicPartition("t", 0)]


def test_the_request_encodes_as_the_protocol_spec_says() -> None:
    built = StableOffsetFetchRequest("g", TPS).prepare({9: (0, 9)})  # the broker's OffsetFetch versions
    assert isinstance(built, OffsetFetchRequest_v7) and built.FLEXIBLE_VERSION
    body = (
        b"\x02g"  # group_id: compact string (length + 1)
        b"\x02"  # topics: compact array of one
        b"\x02t" + b"\x03" + struct.pack(">ii", 0, 1) + b"\x00"  # name, partition_indexes (sorted), tags
        b"\x01"  # require_stable
        b"\x00"  # tags
    )
    assert built.encode() == body
    header = built.build_request_header(correlation_id=7, client_id="c")
    assert header.encode() == struct.pack(">hhih", 9, 7, 7, 1) + b"c" + b"\x00"


def test_a_broker_without_v7_is_refused_rather_than_read_unstable() -> None:
    with pytest.raises(NotImplementedError):
        StableOffsetFetchRequest("g", TPS).prepare({9: (0, 6)})


def response(offsets: dict[int, tuple[int, int]], error: int = 0) -> OffsetFetchResponse_v7:
    parts: list[tuple[int, int, int, None, int, dict[int, bytes]]] = [
        (p, offset, -1, None, code, {}) for p, (offset, code) in sorted(offsets.items())
    ]
    encoded = OffsetFetchResponse_v7(0, [("t", parts, {})], error, {}).encode()
    decoded: OffsetFetchResponse_v7 = OffsetFetchResponse_v7.decode(encoded)
    return decoded


class FakeKafkaClient:
    """Answers the coordinator lookup and the offset fetch from a script (AIOKafkaClient's two calls)."""

    def __init__(self, answers: list[OffsetFetchResponse_v7]) -> None:
        self.answers = answers
        self.lookups = 0
        self.sent: list[tuple[int, Any]] = []

    async def coordinator_lookup(self, kind: int, key: str) -> int:
        assert (kind, key) == (stable_offsets.GROUP_COORDINATOR, "g")
        self.lookups += 1
        return 100 + self.lookups

    async def send(self, node: int, request: Any) -> OffsetFetchResponse_v7:
        self.sent.append((node, request))
        return self.answers.pop(0)


class FakeConsumer:
    def __init__(self, client: FakeKafkaClient) -> None:
        self._client = client


async def test_the_read_waits_while_a_transaction_holds_the_offsets_and_follows_a_moved_coordinator() -> None:
    unstable = stable_offsets.UNSTABLE_OFFSET_COMMIT
    moved = kafka_errors.NotCoordinatorForGroupError.errno
    client = FakeKafkaClient(
        [
            response({0: (-1, unstable), 1: (4, 0)}),
            response({0: (-1, 0), 1: (-1, 0)}, error=moved),
            response({0: (3, 0), 1: (-1, 0)}),
        ]
    )
    got = await committed_stable(FakeConsumer(client), "g", TPS)  # type: ignore[arg-type]
    assert got == {TopicPartition("t", 0): 3, TopicPartition("t", 1): None}
    assert [node for node, _ in client.sent] == [101, 101, 102]  # looked up again after NOT_COORDINATOR


async def test_offsets_held_past_the_deadline_and_refusals_are_errors() -> None:
    held = [response({0: (-1, stable_offsets.UNSTABLE_OFFSET_COMMIT)}) for _ in range(50)]
    with pytest.raises(UnstableOffsets, match="group 'g'"):
        await committed_stable(FakeConsumer(FakeKafkaClient(held)), "g", TPS[1:], timeout=0.05)  # type: ignore[arg-type]
    refused = [response({0: (-1, kafka_errors.GroupAuthorizationFailedError.errno)})]
    with pytest.raises(kafka_errors.GroupAuthorizationFailedError):
        await committed_stable(FakeConsumer(FakeKafkaClient(refused)), "g", TPS[1:])  # type: ignore[arg-type]
