"""Integration tests for pipeline.devstack: the session Kafka/PostgreSQL and the CLI daemons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from typer.testing import CliRunner

from pipeline.cli.devstack import NOT_RUNNING_EXIT, app
from pipeline.devstack.kafka import free_port
from tests.support import poll

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


async def test_kafka_produce_and_consume(kafka_bootstrap: str, unique_id: str) -> None:
    topic = f"devstack-{unique_id}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
        # KRaft: the controller has the topic when create_topics returns; the broker's metadata follows shortly.
        await poll(admin.list_topics, lambda topics: topic in topics, timeout=30, what=f"{topic} in the metadata")
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"devstack-{unique_id}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k1", b"hello")


async def test_postgres_select_one(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "pipeline"
    finally:
        await conn.close()


async def test_postgres_daemon_cycle(state_dir: Path) -> None:
    port = str(free_port())
    pg_dir = str(state_dir / "postgres")
    try:
        code, out = await asyncio.to_thread(invoke, "postgres", "status", "--state-dir", pg_dir)
        assert code == NOT_RUNNING_EXIT, out

        code, out = await asyncio.to_thread(invoke, "postgres", "up", "--state-dir", pg_dir, "--port", port)
        assert code == 0, out
        dsn = out.strip().splitlines()[-1]
        assert dsn.startswith("postgresql://pipeline:") and dsn.endswith(f"@127.0.0.1:{port}/pipeline")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("create table survives_restart (id int)")
        finally:
            await conn.close()

        code, out = await asyncio.to_thread(invoke, "postgres", "up", "--state-dir", pg_dir, "--port", port)
        assert code == 0 and "already running" in out, out
        code, out = await asyncio.to_thread(invoke, "postgres", "status", "--state-dir", pg_dir)
        assert code == 0 and dsn in out, out

        code, out = await asyncio.to_thread(invoke, "postgres", "down", "--state-dir", pg_dir)
        assert code == 0 and "stopped" in out, out
        code, out = await asyncio.to_thread(invoke, "postgres", "status", "--state-dir", pg_dir)
        assert code == NOT_RUNNING_EXIT, out

        # A second `up` reuses the cluster and its password.
        code, out = await asyncio.to_thread(invoke, "postgres", "up", "--state-dir", pg_dir, "--port", port)
        assert code == 0 and out.strip().splitlines()[-1] == dsn, out
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("select count(*) from survives_restart") == 0
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(invoke, "postgres", "down", "--state-dir", pg_dir)
    code, out = await asyncio.to_thread(invoke, "postgres", "down", "--state-dir", pg_dir)
    assert code == 0 and "not running" in out, out


async def test_kafka_daemon_cycle(state_dir: Path) -> None:
    port = free_port()
    kafka_dir = str(state_dir / "kafka")
    try:
        code, out = await asyncio.to_thread(invoke, "kafka", "up", "--state-dir", kafka_dir, "--port", str(port))
        assert code == 0 and f"127.0.0.1:{port}" in out, out

        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

        code, out = await asyncio.to_thread(invoke, "kafka", "up", "--state-dir", kafka_dir, "--port", str(port))
        assert code == 0 and "already running" in out, out
        code, out = await asyncio.to_thread(invoke, "kafka", "status", "--state-dir", kafka_dir)
        assert code == 0 and f"bootstrap 127.0.0.1:{port}" in out, out
    finally:
        code, out = await asyncio.to_thread(invoke, "kafka", "down", "--state-dir", kafka_dir)
    assert code == 0 and "stopped" in out, out
    code, out = await asyncio.to_thread(invoke, "kafka", "status", "--state-dir", kafka_dir)
    assert code == NOT_RUNNING_EXIT, out
    assert data_dirs(kafka_dir), "down keeps the data"
    code, out = await asyncio.to_thread(invoke, "kafka", "down", "--wipe", "--state-dir", kafka_dir)
    assert code == 0 and "deleted" in out and not data_dirs(kafka_dir), out


def data_dirs(state_dir: str) -> list[Path]:
    return list(Path(state_dir).glob("data-*"))


def test_a_slow_start_over_thousands_of_partition_directories_says_how_to_start_empty(state_dir: Path) -> None:
    from pipeline.devstack.kafka import CROWDED_PARTITIONS, KafkaBroker

    broker = KafkaBroker(state_dir=state_dir / "kafka", port=free_port(), controller_port=free_port())
    assert broker._crowded_hint() == ""  # no data yet
    for n in range(CROWDED_PARTITIONS):
        (broker.data_dir / f"t-{n}").mkdir(parents=True)
    assert "2,000 partition directories" in broker._crowded_hint()
    assert "down --wipe" in broker._crowded_hint()
