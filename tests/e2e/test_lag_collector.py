"""The metrics collector on a real broker: it measures lag, and asks the brokers for its own topics' metadata
only, never for every topic of the cluster (a response it would decode on the worker's loop every period)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.config import KafkaSettings
from pipeline.observability.collector import LagCollector, Watched
from tests.leftovers import new_uid


async def test_a_collect_measures_lag_and_asks_for_its_topics_only(kafka_bootstrap: str) -> None:
    uid = new_uid()
    main, tier, dlq = f"t{uid}.sink.tsdb", f"t{uid}.sink.tsdb.retry.1s", f"t{uid}.sink.tsdb.dlq"
    decoys = [f"t{uid}.decoy.{n}" for n in range(5)]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    collector = LagCollector(
        KafkaSettings(bootstrap_servers=kafka_bootstrap),
        [Watched(f"t{uid}.deliver.tsdb", (main, tier), "tsdb")],
        {dlq: "tsdb"},
        {main: None, tier: None, dlq: None},
        interval=1.0,
    )
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=2, replication_factor=1) for n in (main, tier, dlq, *decoys)]
        )
        for n in range(7):
            await producer.send_and_wait(main, b"x", partition=n % 2)
        await producer.send_and_wait(dlq, b"dead", partition=0)
        _, consumer = await collector._clients()
        asked: list[Any] = []
        client = consumer._client
        update = client._metadata_update

        async def recorded(cluster: Any, topics: Any) -> Any:
            asked.append(None if not topics else sorted(topics))
            return await update(cluster, topics)

        client._metadata_update = recorded
        for _ in range(3):  # the second and third rounds start after a round that sampled (assigned) partitions
            snapshot = await collector.collect()
            assert snapshot.ok, snapshot.error
        lag = {(p.topic, p.partition): p.lag for p in snapshot.partitions}
        assert lag == {(main, 0): 4, (main, 1): 3, (tier, 0): 0, (tier, 1): 0}
        assert snapshot.dlq == {dlq: 1}
        assert asked and None not in asked, asked
        assert all(set(topics) <= {main, tier, dlq} for topics in asked), asked
    finally:
        await collector.close()
        await producer.stop()
        await admin.close()  # the topics go with the session (tests.leftovers)
