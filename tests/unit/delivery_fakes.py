"""Fakes that drive a SinkRunner without Kafka: a consumer over an in-memory log, a sink, a producer
that appends to the same log. Each can be told to fail at any call (`faults`), and the consumer checks
the delivery promise at every commit: no committed offset passes an event that is not written, in a
retry tier or in the DLQ."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from pipeline import headers as h
from pipeline.config import KafkaSettings
from pipeline.delivery.consumer import Fetched, Record
from pipeline.delivery.runner import SinkRunner
from pipeline.reliability.breaker import CircuitBreaker
from pipeline.reliability.policies import tier_label
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, Sink, SinkRecord
from pipeline.sinks.settings import SinkSettings
from pipeline.topics import SinkTopicVars, TopicCatalog, TopicVars, load_topics

REPO = Path(__file__).resolve().parents[2]
Faults = Callable[[str], BaseException | None]


def no_faults(call: str) -> BaseException | None:
    return None


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class Log:
    """Topic partitions and their records, shared by the fake consumer and the fake producer."""

    records: dict[TopicPartition, list[Record]] = field(default_factory=dict)
    clock: Callable[[], float] | None = None  # stamps each record (CreateTime, ms); None: timestamp 0

    def append(
        self, tp: TopicPartition, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Record:
        part = self.records.setdefault(tp, [])
        stamp = int(self.clock() * 1000) if self.clock is not None else 0
        record: Record = ConsumerRecord(
            tp.topic, tp.partition, len(part), stamp, 0, key, value, None, 0, 0, tuple(headers)
        )
        part.append(record)
        return record


def event(n: int, poison: bool = False) -> tuple[bytes, bytes]:
    extra = ',"poison":true' if poison else ""
    body = f'{{"n":{n}{extra}}}'.encode()
    return hashlib.sha256(body).hexdigest().encode(), body


class FakeConsumer:
    def __init__(self, log: Log, assigned: set[TopicPartition], clock: Clock, faults: Faults = no_faults) -> None:
        self.log = log
        self.assigned = set(assigned)
        self.clock = clock
        self.faults = faults
        self.positions: dict[TopicPartition, int] = {}
        self.paused_set: set[TopicPartition] = set()
        self.commits: dict[TopicPartition, int] = {}
        self.check: Callable[[TopicPartition, int], None] | None = None

    def _fault(self, call: str) -> None:
        error = self.faults(call)
        if error is not None:
            raise error

    def restart(self) -> None:
        """A new consumer: positions at the committed offsets, nothing paused."""
        self.positions = dict(self.commits)
        self.paused_set = set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched:
        self._fault("getmany")
        out: Fetched = {}
        left = max_records if max_records is not None else 10_000
        for tp in sorted(self.assigned - self.paused_set, key=lambda t: (t.topic, t.partition)):
            position = self.positions.get(tp, 0)
            records = self.log.records.get(tp, [])[position : position + left]
            if records:
                out[tp] = records
                self.positions[tp] = position + len(records)
                left -= len(records)
            if left <= 0:
                break
        if not out:
            self.clock.now += timeout_ms / 1000  # the poll waited
        await asyncio.sleep(0)
        return out

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._fault("seek")
        self.positions[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self._fault("pause")
        self.paused_set |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._fault("resume")
        self.paused_set -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        self._fault("paused")
        return set(self.paused_set)

    def assignment(self) -> set[TopicPartition]:
        self._fault("assignment")
        return set(self.assigned)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._fault("commit")
        for tp, offset in offsets.items():
            if self.check is not None:
                self.check(tp, offset)
            self.commits[tp] = offset

    async def committed(self, partition: TopicPartition) -> int | None:
        self._fault("committed")
        return self.commits.get(partition)


class FakeSink(Sink):
    """Writes by event hash; a batch holding a poison event is rejected as fatal."""

    def __init__(self, settings: SinkSettings, faults: Faults = no_faults, delay: float = 0.0) -> None:
        super().__init__(settings)
        self.faults = faults
        self.delay = delay
        self.written: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.open_errors: list[BaseException] = []

    async def open(self) -> None:
        if self.open_errors:
            raise self.open_errors.pop(0)

    async def write(self, batch: list[SinkRecord]) -> int:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            error = self.faults("write")
            if error is not None:
                raise error
            if any(b'"poison"' in r.body for r in batch):
                raise FatalSinkError("poison event")
            self.written.extend(r.event_hash for r in batch)
            return len(batch)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass


class FakeProducer:
    """Appends what is produced to the log (partition 0); remembers the source of each produced record."""

    def __init__(self, log: Log, faults: Faults = no_faults) -> None:
        self.log = log
        self.faults = faults
        self.produced: dict[tuple[str, int, int], str] = {}  # (failed topic, partition, offset) -> topic

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *, headers: Any = None
    ) -> Awaitable[Any]:
        error = self.faults("send")
        if error is not None:
            raise error
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = self.faults("delivery")
        if error is not None:
            future.set_exception(error)
            return future
        headers = list(headers or ())
        self.log.append(TopicPartition(topic, 0), key, value, headers)
        source = (
            h.header_value(headers, h.FAILED_TOPIC) or "",
            int(h.header_value(headers, h.FAILED_PARTITION) or -1),
            int(h.header_value(headers, h.FAILED_OFFSET) or -1),
        )
        self.produced[source] = topic
        future.set_result(None)
        return future


@dataclass
class Rig:
    runner: SinkRunner
    consumer: FakeConsumer
    sink: FakeSink
    producer: FakeProducer
    log: Log
    clock: Clock
    settings: SinkSettings
    catalog: TopicCatalog
    #: Commits that passed an event not done. Recorded, not raised: the runner catches every exception
    #: out of a commit, so an assertion there would be swallowed.
    violations: list[str] = field(default_factory=list)

    @property
    def main(self) -> str:
        return self.runner.main_topic

    @property
    def dlq(self) -> str:
        return self.runner.dlq_topic

    def done(self, tp: TopicPartition, record: Record) -> bool:
        """Written to the sink, or produced to a retry tier or the DLQ."""
        key = record.key or b""
        written = key.decode("utf-8", "replace") in self.sink.written
        return written or (tp.topic, tp.partition, record.offset) in self.producer.produced

    def check(self, tp: TopicPartition, offset: int) -> None:
        for record in self.log.records.get(tp, [])[:offset]:
            if not self.done(tp, record):
                self.violations.append(f"commit {offset} of {tp} passes offset {record.offset}, not delivered")

    def in_dlq(self) -> list[Record]:
        return self.log.records.get(TopicPartition(self.dlq, 0), [])


def rig(
    *,
    partitions: int = 2,
    sink_faults: Faults = no_faults,
    consumer_faults: Faults = no_faults,
    producer_faults: Faults = no_faults,
    rng: random.Random | None = None,
    sink_delay: float = 0.0,
    **settings: Any,
) -> Rig:
    fields: dict[str, Any] = {
        "batch_size": 5,
        "linger_ms": 0,
        "retry": {"max_retries": 2, "initial_backoff_ms": 100, "max_backoff_ms": 400, "timeout_ms": 2000},
        "circuit_breaker": {"failure_threshold": 3, "open_duration_sec": 1.0, "success_threshold": 1},
    }
    fields.update(settings)
    config = SinkSettings.model_validate({"name": "fake", "type": "fake", "enabled": True, **fields})
    tiers = tuple(tier_label(d) for d in config.retry.tier_delays_ms())
    catalog = load_topics(
        REPO / "topics.yaml",
        TopicVars(ingest_topic="in", app_id="t", sinks=(SinkTopicVars("fake", tiers),), partitions=partitions),
    )
    clock = Clock()
    log = Log(clock=clock)
    breaker = CircuitBreaker("fake", config.circuit_breaker, clock=clock)
    sink = FakeSink(config, sink_faults, delay=sink_delay)
    producer = FakeProducer(log, producer_faults)
    runner = SinkRunner(
        sink=sink,
        settings=config,
        catalog=catalog,
        kafka=KafkaSettings(),
        group_id="g",
        producer=producer,
        breaker=breaker,
        clock=clock,
        rng=rng or random.Random(0),
        sleep=clock.sleep,
    )
    runner.rerouter.attempt_timeout_s = 1.0
    topics = [catalog.sink("fake").name, *(s.name for s in catalog.sink_retry("fake"))]
    assigned = {TopicPartition(t, p) for t in topics for p in range(partitions)}
    consumer = FakeConsumer(log, assigned, clock, consumer_faults)
    runner.consumer = consumer
    made = Rig(runner, consumer, sink, producer, log, clock, config, catalog)
    consumer.check = made.check
    return made


def fill(r: Rig, count: int, *, poison: frozenset[int] = frozenset(), partitions: int = 2) -> None:
    for n in range(count):
        key, body = event(n, n in poison)
        r.log.append(TopicPartition(r.main, n % partitions), key, body, [])


async def drive(r: Rig, rounds: int, *, until: Callable[[], bool] | None = None) -> int:
    """Run rounds like `SinkRunner.run` does; an exception out of a round restarts the runner's consumer
    (as the supervisor would). Returns the number of restarts. Fails if a commit passed an event not done."""
    restarts = 0
    for _ in range(rounds):
        if until is not None and until():
            break
        try:
            await r.runner.step()
        except Exception:
            restarts += 1
            r.consumer.restart()
            r.runner.reset_positions()
    assert not r.violations, r.violations
    return restarts


def all_done(r: Rig) -> bool:
    """Every record of every partition the runner reads is committed past (so done)."""
    return all(r.consumer.commits.get(tp, 0) >= len(r.log.records.get(tp, [])) for tp in r.consumer.assigned)


def errors(kinds: dict[str, list[BaseException]], rng: random.Random, rate: float) -> Faults:
    def fault(call: str) -> BaseException | None:
        options = kinds.get(call)
        if options and rng.random() < rate:
            return rng.choice(options)
        return None

    return fault


FAULTS: dict[str, list[BaseException]] = {
    "getmany": [KafkaError("fetch failed"), RuntimeError("bug in fetch")],
    "seek": [RuntimeError("seek failed")],
    "pause": [RuntimeError("pause failed")],
    "resume": [RuntimeError("resume failed")],
    "paused": [RuntimeError("paused failed")],
    "assignment": [RuntimeError("assignment failed")],
    "commit": [CommitFailedError("rebalanced"), KafkaError("commit failed"), RuntimeError("bug in commit")],
    "write": [RetryableSinkError("503"), FatalSinkError("400"), RuntimeError("bug in the sink")],
    "send": [KafkaError("unknown topic"), RuntimeError("bug in send")],
    "delivery": [KafkaError("message too large")],
}
