"""Per-test pipeline stacks on the session's broker and database: own topics, app id, table, data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults import FaultProxy
from tests.support import REPO, WorkerProcess


@dataclass
class Stack:
    bootstrap: str
    dsn: str
    uid: str
    workdir: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def ingest_topic(self) -> str:
        return f"t{self.uid}.events.ingest"

    @property
    def app_id(self) -> str:
        return f"t{self.uid}"

    @property
    def table(self) -> str:
        return f"events_{self.uid}"

    @property
    def prefix(self) -> str:
        return f"t{self.uid}."

    def sink_topic(self, sink: str = "tsdb") -> str:
        return f"{self.prefix}sink.{sink}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PIPELINE_APP_ID": self.app_id,
            "INGEST_TOPIC": self.ingest_topic,
            "TOPIC_PREFIX": self.prefix,
            "TOPICS_FILE": str(REPO / "topics.yaml"),
            "KAFKA_TOPIC_PARTITIONS": str(self.partitions),
            "TSDB_ENABLED": "true",
            "TSDB_DSN": self.dsn,
            "TSDB_TABLE": self.table,
            "TSDB_LINGER_MS": "100",
            "WEB_ENABLED": "false",
            "LOG_FORMAT": "json",
            "PIPELINE_CONFIG": "",
        }
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def worker(self, name: str = "worker", **overrides: str) -> WorkerProcess:
        env = self.env(PIPELINE_DATA_DIR=str(self.workdir / name / "data"), **overrides)
        worker = WorkerProcess(env, self.workdir / name, name=name)
        self.workers.append(worker)
        return worker.start()


@pytest.fixture
async def proxy(postgres_dsn: str) -> AsyncIterator[FaultProxy]:
    """A fault-injecting TCP proxy in front of the session's PostgreSQL."""
    p = await FaultProxy.before(postgres_dsn).start()
    yield p
    await p.stop()


@pytest.fixture
def stack(kafka_bootstrap: str, postgres_dsn: str, unique_id: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(bootstrap=kafka_bootstrap, dsn=postgres_dsn, uid=unique_id, workdir=tmp_path)
    yield s
    for worker in s.workers:
        if worker.running:
            worker.stop()
