"""Where the latency run's time goes, hop by hop, from what Kafka and the database recorded: the publish time
in the payload, the Kafka timestamps (CreateTime, set by each producer when it appends the record) of the
event's record on the by-hash topic and on the sink topic, and the row's insert time.

- ingest: publish -> the by-hash record (the publisher's send, the broker, the worker's fetch, the ingest
  agent's parse and hash);
- dedupe: by-hash record -> sink-topic record (the produce's round trip and ack, the fetch, the decision);
- delivery: sink-topic record -> row (the produce, the delivery consumer's fetch, the linger, the write).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.report import latency_percentiles
from pipeline.observability.lag import topic_ends
from pipeline.sinks.postgres.sink import quote_ident

HOPS = ("ingest", "dedupe", "delivery")


async def record_times(bootstrap: str, topic: str) -> dict[bytes, int]:
    """Key -> Kafka timestamp (ms) of every record on `topic` up to its end now (the first one per key)."""
    ends = {TopicPartition(topic, p): end for p, end in (await topic_ends(bootstrap, topic)).items()}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    times: dict[bytes, int] = {}
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        left = {tp for tp, end in ends.items() if end > 0}
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in fetched.items():
                for record in records:
                    if record.key is not None:
                        times.setdefault(record.key, record.timestamp)
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return times


async def hop_percentiles(
    bootstrap: str, dsn: str, table: str, by_hash_topic: str, sink_topic: str
) -> dict[str, dict[str, float]]:
    """p50, p90, p99, p99.9 and max (ms) of each hop over the rows that carry a publish time."""
    by_hash = await record_times(bootstrap, by_hash_topic)
    sink = await record_times(bootstrap, sink_topic)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT event_hash, (payload->>'sent_at_ms')::float8 / 1000 AS sent, "
            "extract(epoch FROM ingested_at)::float8 AS row "
            f"FROM {quote_ident(table)} WHERE payload ? 'sent_at_ms'"
        )
    finally:
        await conn.close()
    return hops_of(rows, by_hash, sink)


def hops_of(rows: list[Any], by_hash: dict[bytes, int], sink: dict[bytes, int]) -> dict[str, dict[str, float]]:
    """The hop percentiles of `rows` (event_hash, sent, row in epoch seconds), whose hashes key both topics'
    records; a row without both records is left out (and a hop without rows)."""
    spans: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for row in rows:
        key = str(row["event_hash"]).encode()
        first, second = by_hash.get(key), sink.get(key)
        if first is None or second is None:
            continue
        spans["ingest"].append(first / 1000 - float(row["sent"]))
        spans["dedupe"].append((second - first) / 1000)
        spans["delivery"].append(float(row["row"]) - second / 1000)
    return {
        hop: {k: round(v, 1) for k, v in latency_percentiles(values).items()} for hop, values in spans.items() if values
    }
