"""pipeline.produce.BatchProducer on the real broker: sends made while a flush is in flight share the next
flush, every record lands once and in order per partition, each send learns the offset of its own last
record per partition, and a failed hand-over fails the sends in it instead of leaving them waiting."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.config import KafkaSettings
from pipeline.produce import BatchProducer, Record
from tests.support import create_topics, read_topic

PARTITIONS = 3


def producer(bootstrap: str) -> BatchProducer:
    return BatchProducer(KafkaSettings(bootstrap_servers=bootstrap), client_id="test-batch", max_request_size=1 << 20)


async def test_concurrent_sends_share_flushes_and_land_in_order(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"batch-producer-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    sends, per_send = 60, 20
    async with producer(kafka_bootstrap) as out:
        # One record first: the flush it starts is in flight while the 60 sends below queue behind it.
        await out.send([Record(topic, b"first", b"first", [], 0)])
        flushes_before = out.flushes
        batches = [
            [
                Record(topic, f"{n}".encode(), f"{n}:{i}".encode(), [("n", str(n).encode())], i % PARTITIONS)
                for i in range(per_send)
            ]
            for n in range(sends)
        ]
        results = await asyncio.gather(*(out.send(batch) for batch in batches))
        flushes = out.flushes - flushes_before
    assert flushes < sends / 4, f"{flushes} flushes for {sends} concurrent sends: nothing was coalesced"

    records = await read_topic(kafka_bootstrap, topic)
    assert len(records) == 1 + sends * per_send
    by_partition: dict[int, list[bytes | None]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(record.value)
    for partition, values in by_partition.items():
        expected = [f"{n}:{i}".encode() for n in range(sends) for i in range(per_send) if i % PARTITIONS == partition]
        assert [v for v in values if v != b"first"] == expected, f"partition {partition} out of order"
    # Each send's offsets are those of its own last record in each partition.
    where = {(r.partition, r.offset): r.value for r in records}
    for n, result in enumerate(results):
        assert set(result) == {(topic, p) for p in range(PARTITIONS)}
        for (_, partition), offset in result.items():
            last_i = max(i for i in range(per_send) if i % PARTITIONS == partition)
            assert where[(partition, offset)] == f"{n}:{last_i}".encode()


async def test_a_failed_hand_over_fails_its_sends(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"batch-producer-bad-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    async with producer(kafka_bootstrap) as out:
        good = Record(topic, b"k", b"v", [], 1)
        bad = Record(topic, b"k", b"v", [], PARTITIONS + 5)  # no such partition
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(asyncio.gather(out.send([good]), out.send([bad])), timeout=30)
        assert not isinstance(failed.value, TimeoutError), "a send was left waiting for a failed flush"
        # The producer goes on: a later send is written.
        written = await asyncio.wait_for(out.send([good]), timeout=30)
    assert set(written) == {(topic, 1)}
