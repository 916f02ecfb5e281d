"""The bare loop: what the hot path costs without a framework. Run as its own process by the harness:

    python -m bench.bare --bootstrap B --topic T --group G --dsn D --table TABLE

aiokafka `getmany` -> orjson -> canonical JSON (sorted keys) -> sha256 -> asyncpg COPY into a temp table +
one `INSERT ... SELECT ... ON CONFLICT DO NOTHING` (the PostgreSQL sink's own statement) -> commit the
transaction, then the Kafka offsets. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import signal

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.sinks.postgres.sink import PLAIN_KEY, insert_sql, quote_ident

MAX_RECORDS = 5000
BATCH_TABLE = "bare_batch"  # the bare loop: COPY into a temp table, then INSERT ... ON CONFLICT


async def run(bootstrap: str, topic: str, group: str, dsn: str, table: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        f"CREATE TEMP TABLE {BATCH_TABLE} (event_hash text NOT NULL, body text NOT NULL) ON COMMIT DELETE ROWS"
    )
    batch = f"SELECT event_hash, body::jsonb AS b FROM pg_temp.{BATCH_TABLE}"
    insert = insert_sql(quote_ident(table), PLAIN_KEY, batch)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=16 << 20,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            rows = []
            for records in batches.values():
                for record in records:
                    body = orjson.dumps(orjson.loads(record.value or b"{}"), option=orjson.OPT_SORT_KEYS)
                    rows.append((hashlib.sha256(body).hexdigest(), body.decode()))
            if not rows:
                continue
            async with conn.transaction():
                await conn.copy_records_to_table(
                    BATCH_TABLE, schema_name="pg_temp", columns=("event_hash", "body"), records=rows
                )
                await conn.execute(insert)
            await consumer.commit()
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("bootstrap", "topic", "group", "dsn", "table"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.bootstrap, args.topic, args.group, args.dsn, args.table))


if __name__ == "__main__":
    main()
