"""pipeline.produce.BatchProducer on the real broker: sends made while a flush is in flight share the next
flush, every record lands once and in order per partition, each send learns the offset of its own last
record per partition, a failed hand-over fails the sends in it instead of leaving them waiting, two flushes
start at least the flush interval apart while a record after idle goes at once, and one producer shared by
several users starts with the first and stops with the last; keyed records land where Kafka's default
partitioner puts their keys."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

import pipeline.produce
from pipeline.config import KafkaSettings
from pipeline.produce import VECTOR_MIN_KEYS, BatchProducer, Record, acked_producer, partition_for
from tests.support import batch_codecs, create_topics, read_topic

PARTITIONS = 3


def producer(bootstrap: str, **settings: Any) -> BatchProducer:
    kafka = KafkaSettings(bootstrap_servers=bootstrap, **settings)
    return BatchProducer(kafka, client_id="test-batch", max_request_size=1 << 20)


def spied(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], list[Any]]:
    """The aiokafka producers BatchProducers build from now on, the batches handed to them, and those
    stopped."""
    built: list[Any] = []
    handed: list[Any] = []
    stopped: list[Any] = []
    build = pipeline.produce.acked_producer

    def counting(*args: Any, **kwargs: Any) -> Any:
        made = build(*args, **kwargs)
        send_batch, stop = made.send_batch, made.stop

        async def handing(*a: Any, **k: Any) -> Any:
            handed.append(a)
            return await send_batch(*a, **k)

        async def stopping() -> None:
            stopped.append(made)
            await stop()

        made.send_batch, made.stop = handing, stopping
        built.append(made)
        return made

    monkeypatch.setattr(pipeline.produce, "acked_producer", counting)
    return built, handed, stopped


async def test_concurrent_sends_share_flushes_and_land_in_order(
    kafka_bootstrap: str, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"batch-producer-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    sends, per_send = 60, 20
    _, handed, _ = spied(monkeypatch)
    async with producer(kafka_bootstrap) as out:
        # One record first: the flush it starts is in flight while the 60 sends below queue behind it.
        await out.send([Record(topic, b"first", b"first", [], 0)])
        handed_before = len(handed)
        batches = [
            [
                Record(topic, f"{n}".encode(), f"{n}:{i}".encode(), [("n", str(n).encode())], i % PARTITIONS)
                for i in range(per_send)
            ]
            for n in range(sends)
        ]
        results = await asyncio.gather(*(out.send(batch) for batch in batches))
        batches_handed = len(handed) - handed_before
    # Uncoalesced, each send would hand over one batch per partition.
    assert batches_handed < sends * PARTITIONS / 4, f"{batches_handed} batches for {sends} sends: nothing was coalesced"

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


async def test_flushes_start_an_interval_apart_and_a_record_after_idle_goes_at_once(
    kafka_bootstrap: str, unique_id: str
) -> None:
    topic = f"batch-producer-interval-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    interval = 1.0  # far above a local ack, so neither bound below depends on the host's speed
    loop = asyncio.get_running_loop()
    async with producer(kafka_bootstrap, produce_flush_interval_ms=int(interval * 1000)) as out:
        await out.partitions(topic)  # metadata first: the sends below time flushes only
        started = loop.time()
        await out.send([Record(topic, b"k", b"first", [], 0)])
        first = loop.time() - started
        await out.send([Record(topic, b"k", b"second", [], 0)])  # the producer is idle, but the interval is not over
        second = loop.time() - started
    assert first < interval / 2, f"the first record after idle waited {first:.3f}s"
    assert second >= interval * 0.99, f"the second flush started {second:.3f}s after the first, under {interval}s"
    assert [r.value for r in await read_topic(kafka_bootstrap, topic)] == [b"first", b"second"]


async def test_one_producer_shared_by_two_users_starts_once_and_stops_with_the_last(
    kafka_bootstrap: str, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"batch-producer-shared-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    built, _, stopped = spied(monkeypatch)
    shared = producer(kafka_bootstrap)
    first_in = asyncio.Event()
    first_out = asyncio.Event()

    async def user(name: bytes, *, leaves_first: bool) -> None:
        async with shared:
            if leaves_first:
                first_in.set()
            else:
                await first_in.wait()
            await shared.send([Record(topic, name, name + b"-1", [], 0)])
            if not leaves_first:
                await first_out.wait()  # the other user has left: this one still sends
                await shared.send([Record(topic, name, name + b"-2", [], 0)])
        if leaves_first:
            first_out.set()

    await asyncio.wait_for(asyncio.gather(user(b"a", leaves_first=True), user(b"b", leaves_first=False)), 60)
    assert len(built) == 1, f"{len(built)} aiokafka producers for one shared BatchProducer"
    assert stopped == built, "the last user out did not stop the producer"
    values = sorted(r.value or b"" for r in await read_topic(kafka_bootstrap, topic))
    assert values == [b"a-1", b"b-1", b"b-2"]


async def test_keyed_records_land_on_the_default_partitioners_partition(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"batch-producer-keys-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], PARTITIONS)
    hashes = [hashlib.sha256(str(n).encode()).hexdigest().encode() for n in range(VECTOR_MIN_KEYS * 3)]
    odd = [b"k", b"other-length", b""]  # fewer than VECTOR_MIN_KEYS of their length, and one without a key
    async with producer(kafka_bootstrap) as out:
        await out.send([Record(topic, key or None, key, []) for key in hashes + odd])
    records = await read_topic(kafka_bootstrap, topic)
    assert len(records) == len(hashes) + len(odd)
    for record in records:
        if record.key:
            assert record.partition == partition_for(record.key, PARTITIONS), record.key


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
async def test_record_batches_are_stored_with_the_configured_compression(
    kafka_bootstrap: str, unique_id: str, codec: str
) -> None:
    """KAFKA_COMPRESSION_TYPE reaches every producer of the pipeline: the agents' BatchProducer and the
    acked producers (publisher, retry tiers, DLQs); the broker stores their batches in that codec (topics
    keep the producer's, Kafka's default compression.type=producer) and consumers read them back as sent."""
    topic = f"batch-producer-codec-{codec}-{unique_id}"
    await create_topics(kafka_bootstrap, [topic], 1)
    values = [b'{"n": %d, "note": "%s"}' % (n, b"steady state " * 8) for n in range(200)]
    async with producer(kafka_bootstrap, compression_type=codec) as out:
        await out.send([Record(topic, b"k%d" % n, v, [("h", b"1")], 0) for n, v in enumerate(values[:100])])
    single = acked_producer(
        KafkaSettings(bootstrap_servers=kafka_bootstrap, compression_type=codec),
        client_id="test-acked",
        max_request_size=1 << 20,
    )
    await single.start()
    try:
        await asyncio.gather(*[await single.send(topic, v, key=b"s", partition=0) for v in values[100:]])
    finally:
        await single.stop()
    codecs = await batch_codecs(kafka_bootstrap, topic, 0)
    assert codecs and set(codecs) == {codec}, codecs
    assert [r.value for r in await read_topic(kafka_bootstrap, topic)] == values
