"""Helpers for integration tests: polling with deadlines, worker processes, Kafka and PostgreSQL probes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


async def poll(
    probe: Callable[[], Awaitable[T]],
    until: Callable[[T], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Call `probe` until `until(value)` holds; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)
        value = await probe()
    return value


class WorkerProcess:
    """`pipeline worker` in a subprocess, with its log in a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        name: str = "worker",
        module: Sequence[str] = ("pipeline.cli.main", "worker"),
    ) -> None:
        self.env = {**os.environ, **env}
        self.module = tuple(module)
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.module],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    lines.append({"event": line})
        return lines

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == event]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not stop within {timeout}s after SIGTERM") from None

    def tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        env={**os.environ, **env},
        cwd=cwd or REPO,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


Message = tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(partition, key, value, headers) of a record to produce."""


async def produce(bootstrap: str, topic: str, messages: Sequence[Message]) -> None:
    """Send (partition, key, value, headers) tuples with acks=all and wait for all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, partition=partition, headers=headers)
            for partition, key, value, headers in messages
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 1) -> None:
    """Create plain topics (replication 1) for a test that runs outside the topic catalog."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def delete_records(bootstrap: str, before: Mapping[TopicPartition, int]) -> None:
    """Delete each partition's records below the given offset, as retention would."""
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=offset) for tp, offset in before.items()})
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, timeout: float = 30, *, committed_only: bool = False) -> list[Record]:
    """Every record in the topic, from the beginning up to the end offsets seen at the start
    (`committed_only`: as a read_committed consumer sees them, up to the last stable offsets)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout}s")
            batch = await consumer.getmany(timeout_ms=500)
            for tp_records in batch.values():
                for r in tp_records:
                    records.append(Record(r.partition, r.offset, r.key, r.value, dict(r.headers)))
        return records
    finally:
        await consumer.stop()


async def batch_codecs(bootstrap: str, topic: str, partition: int = 0) -> list[str]:
    """The compression codec of every record batch stored in a partition, read with a raw Fetch from its
    leader: what the broker keeps on disk and serves, which no consumer API shows."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    names = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = FetchRequest(500, 1, 16 << 20, 0, [(topic, [(partition, 0, 16 << 20)])])
        response = await client.send(leader, request)
        ((_, partitions),) = response.topics
        ((_, error, _, *data),) = partitions
        assert error == 0, f"fetch of {topic}[{partition}] failed with error code {error}"
        records = MemoryRecords(data[-1])
        codecs = []
        while (batch := records.next_batch()) is not None:
            codecs.append(names[batch.compression_type])
        return codecs
    finally:
        await client.close()


async def count_rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1)", table)
        if exists is None:
            return 0
        return int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()
