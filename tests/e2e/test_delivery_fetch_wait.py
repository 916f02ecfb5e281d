"""The delivery consumer's fetch wait, on the real broker. aiokafka sends one fetch per broker at a time and
leaves out the partitions whose records are still buffered, so a fetch sent while delivery works on a round
can hold only idle partitions (a retry tier): the broker keeps it for `fetch_max_wait_ms`, and a record of
the sink topic produced meanwhile waits behind it. With aiokafka's default (500 ms) this test measures a
wait of 0.50 s; pipeline.delivery.consumer.FETCH_MAX_WAIT_MS bounds it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener

from pipeline.config import KafkaSettings
from pipeline.delivery.consumer import open_consumer
from pipeline.sinks.settings import SinkSettings
from tests.support import create_topics


class _Quiet(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def test_a_record_behind_a_fetch_of_idle_partitions_waits_little(kafka_bootstrap: str, unique_id: str) -> None:
    busy, idle = f"fw-{unique_id}.sink", f"fw-{unique_id}.sink.retry.1s"
    await create_topics(kafka_bootstrap, [busy, idle])
    settings = SinkSettings.model_validate({"name": "fw", "type": "http", "enabled": True, "batch_size": 1})
    consumer = open_consumer(
        settings,
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        group_id=f"fw-{unique_id}",
        pattern=f"^fw-{unique_id}\\.sink(\\.retry\\..*)?$",
        listener=_Quiet(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    await consumer.start()
    waits: list[float] = []
    try:
        await (await producer.send(busy, b"first"))
        while not await consumer.getmany(timeout_ms=1000):  # joined, assigned, first record read
            pass
        for n in range(3):
            # Two records in one fetch: one taken, one left buffered, so the next fetch holds the idle tier only.
            sent = [await producer.send(busy, b"a"), await producer.send(busy, b"b")]
            await asyncio.gather(*sent)
            assert await consumer.getmany(timeout_ms=5000, max_records=1)
            await asyncio.sleep(0.1)  # a round's work
            assert await consumer.getmany(timeout_ms=5000, max_records=1)
            await (await producer.send(busy, f"new {n}".encode()))
            started = time.monotonic()
            assert await consumer.getmany(timeout_ms=5000), "the new record was not fetched"
            waits.append(time.monotonic() - started)
    finally:
        await consumer.stop()
        await producer.stop()
    # The least of three rounds: a loaded host can slow a round, never shorten the broker's hold of a fetch.
    assert min(waits) < 0.3, f"a new record waited {waits} s behind a fetch of idle partitions"
