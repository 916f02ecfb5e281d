"""The broker and database the benchmark runs on, and each contender's own names on them (a lane).

The stack: `KAFKA_BOOTSTRAP_SERVERS` and `POSTGRES_DSN` when set, else the devstack broker and PostgreSQL
(started when not running, stopped at the end if this run started them). Every lane has a unique prefix
(`bench.<run id>.<lane>.`) for its topics and consumer groups and its own table, so contenders never see
each other's records; `cleanup` deletes the run's topics and tables.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.events import Message
from pipeline.config import load_settings
from pipeline.sinks.postgres.sink import PLAIN_KEY, create_table_sql, quote_ident
from pipeline.topics import TopicCatalog, apply_topics, load_topics

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    bootstrap: str
    dsn: str
    started_kafka: bool = False
    started_postgres: bool = False
    # Where the database keeps its data, when the benchmark knows (the devstack's): bench.disk_probe syncs there.
    database_dir: Path | None = None


def open_stack() -> Stack:
    bootstrap, dsn = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("POSTGRES_DSN")
    started_kafka = started_pg = False
    database_dir: Path | None = None
    if not bootstrap:
        from pipeline.devstack.kafka import kafka_up

        status, started_kafka = kafka_up()
        bootstrap = status.bootstrap
    if not dsn:
        from pipeline.devstack.postgres import postgres_up

        pg, started_pg = postgres_up()
        dsn, database_dir = pg.dsn, pg.state_dir
    assert bootstrap and dsn
    return Stack(bootstrap, dsn, started_kafka, started_pg, database_dir)


def close_stack(stack: Stack) -> None:
    if stack.started_kafka:
        from pipeline.devstack.kafka import kafka_down

        kafka_down()
    if stack.started_postgres:
        from pipeline.devstack.postgres import postgres_down

        postgres_down()


@dataclass
class Lane:
    """One contender's names: topics and groups under `prefix`, its table, its working directory."""

    run_id: str
    name: str
    partitions: int
    workdir: Path
    # Settings every pipeline worker of the run gets (`--worker-env`), over the defaults below.
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"bench.{self.run_id}.{self.name}."

    @property
    def app_id(self) -> str:
        return f"bench.{self.run_id}.{self.name}"

    @property
    def ingest_topic(self) -> str:
        return f"{self.prefix}ingest"

    @property
    def table(self) -> str:
        return f"bench_{self.run_id}_{self.name.replace('-', '_')}"

    @property
    def dir(self) -> Path:
        return self.workdir / self.name

    def worker_env(self, stack: Stack, **overrides: str) -> dict[str, str]:
        """The environment of a `pipeline worker` for this lane: product defaults except names and logs. The web
        server and its metrics collector run, as in production (on loopback; each worker gets its port in
        `bench.runs.pipeline_worker`)."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
            "PIPELINE_APP_ID": self.app_id,
            "INGEST_TOPIC": self.ingest_topic,
            "TOPIC_PREFIX": self.prefix,
            "TOPICS_FILE": str(REPO / "topics.yaml"),
            "KAFKA_TOPIC_PARTITIONS": str(self.partitions),
            "TSDB_ENABLED": "true",
            "TSDB_DSN": stack.dsn,
            "TSDB_TABLE": self.table,
            "PIPELINE_DATA_DIR": str(self.dir / "data"),
            "WEB_ENABLED": "true",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "PIPELINE_CONFIG": "",
        }
        env.update(self.env)
        env.update(overrides)
        return env


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The harness's environment for a child, with the repo importable (bench.* modules)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


async def pipeline_topics(lane: Lane, stack: Stack, env: Mapping[str, str]) -> TopicCatalog:
    """Create the lane's topics from topics.yaml as the worker would, and return the catalog."""
    settings = load_settings(environ=env)
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    await apply_topics(catalog, stack.bootstrap, **settings.kafka.admin_kwargs())
    return catalog


async def create_topic(stack: Stack, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def create_table(stack: Stack, table: str) -> None:
    """The sink's own table, except that `ingested_at` takes the database clock per row
    (clock_timestamp(), not the transaction's start): the row's insert time for the timelines and latency."""
    ddl = create_table_sql(quote_ident(table), PLAIN_KEY)
    assert "DEFAULT now()" in ddl, "the sink's DDL changed: update bench.stack.create_table"
    ddl = ddl.replace("DEFAULT now()", "DEFAULT clock_timestamp()")
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute(ddl)
    finally:
        await conn.close()


async def produce(stack: Stack, topic: str, messages: Iterable[Message]) -> int:
    """Write the messages to their partitions in large batches (the backlog, before a contender starts)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap, acks="all", linger_ms=50, max_batch_size=1 << 20, max_request_size=4 << 20
    )
    await producer.start()
    sent = 0
    try:
        await _leaders(producer, topic)
        by_partition: dict[int, list[Message]] = {}
        for m in messages:
            by_partition.setdefault(m.partition, []).append(m)
        pending: list[asyncio.Future[Any]] = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for m in items:
                if batch.append(key=m.key, value=m.value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=m.key, value=m.value, timestamp=None)
                sent += 1
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending.clear()
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def _leaders(producer: AIOKafkaProducer, topic: str, timeout: float = 30.0) -> None:
    """Wait until every partition of a topic just created has a leader (else the first sends bounce)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await producer.client.force_metadata_update()
        cluster = producer.client.cluster
        partitions = cluster.partitions_for_topic(topic) or set()
        leaders = [cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions]
        if partitions and all(leader is not None and leader >= 0 for leader in leaders):
            return
        await asyncio.sleep(0.2)


async def cleanup(stack: Stack, run_id: str) -> None:
    """Delete every topic and table of this run."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"bench.{run_id}.")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    conn = await asyncpg.connect(stack.dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE $1", f"bench_{run_id}_%"
        )
        for row in tables:
            await conn.execute(f"DROP TABLE IF EXISTS {quote_ident(row['tablename'])}")
    finally:
        await conn.close()
