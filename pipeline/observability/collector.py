"""The broker-side metrics of a worker, computed every METRICS_INTERVAL_SEC by one background task with one
admin client and one group-less consumer, never per scrape (a scrape reads the last values and cannot
hang on the broker):

- consumer lag per group, topic and partition (kafka-lag-exporter's names): high watermark minus the
  committed offset; lag seconds: the age of the next record the group has not committed (its timestamp,
  read with one small fetch per lagging partition);
- per sink: what waits in Kafka for it (its topic and retry tiers, not committed by its delivery group),
  in records and estimated bytes, the age of its oldest event not yet written and the headroom before
  the topic's retention.ms deletes it;
- records held by every dead-letter topic (for /health/dlq).

The groups are the worker's Faust group (`app_id`: ingest and dedupe) and one delivery group per sink
(`<app_id>.deliver.<sink>`). Every worker of an app reports the same groups; dashboards take max by group.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipeline.config import KafkaSettings, Settings
from pipeline.observability import metrics
from pipeline.observability.lag import lag_seconds, metadata_of, partition_lag
from pipeline.topics import TopicCatalog

log = structlog.get_logger("pipeline.metrics")

SAMPLE_FETCH_BYTES = 16_384  # per partition: the first record of each lagging partition is all we need


@dataclass(frozen=True)
class Watched:
    """A consumer group and the topics it consumes; `sink` when it is a sink's delivery group."""

    group: str
    topics: tuple[str, ...]
    sink: str | None = None


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    lag: int
    seconds: float | None  # None: the next record could not be read in time
    record_bytes: int | None  # size of that record (key, value, headers), for the bytes estimate


@dataclass(frozen=True)
class SinkBacklog:
    sink: str
    queue_size: int
    queue_bytes: int
    age_sec: float
    headroom_sec: float  # inf when the topics keep records for ever
    headroom_ratio: float


@dataclass
class Snapshot:
    """One collection round. `ok` False (with `error`): the broker did not answer; the values are empty."""

    at: float = 0.0  # time.time() of the round; 0 before the first
    ok: bool = False
    error: str | None = None
    duration_sec: float = 0.0
    partitions: list[PartitionLag] = field(default_factory=list)
    sinks: dict[str, SinkBacklog] = field(default_factory=dict)
    dlq: dict[str, int] = field(default_factory=dict)  # DLQ topic -> records it holds


def watched_groups(settings: Settings, catalog: TopicCatalog) -> list[Watched]:
    groups = [Watched(settings.app_id, (catalog.ingest.name, catalog.by_hash.name))]
    for sink in settings.enabled_sinks():
        topics = (catalog.sink(sink.name).name, *(spec.name for spec in catalog.sink_retry(sink.name)))
        groups.append(Watched(f"{settings.app_id}.deliver.{sink.name}", topics, sink.name))
    return groups


def dlq_topics(settings: Settings, catalog: TopicCatalog) -> dict[str, str | None]:
    """DLQ topic -> the sink it belongs to (None: the ingest DLQ)."""
    topics: dict[str, str | None] = {catalog.ingest_dlq.name: None}
    topics.update({catalog.sink_dlq(s.name).name: s.name for s in settings.enabled_sinks()})
    return topics


def retention_ms(catalog: TopicCatalog, topic: str) -> int | None:
    """The topic's retention.ms from the catalog; None for no time limit (-1) or not declared."""
    spec = catalog.get(topic)
    raw = spec.config.get("retention.ms") if spec is not None else None
    try:
        value = int(raw) if raw is not None else -1
    except ValueError:
        return None
    return value if value > 0 else None


def sink_backlog(
    sink: str, main_topic: str, parts: Iterable[PartitionLag], retention: Mapping[str, int | None]
) -> SinkBacklog:
    """What waits for one sink, from its delivery group's partitions. The headroom is the least, over the
    lagging partitions, of the topic's retention minus the age of its next record; the ratio is taken
    against the same topic's retention. Nothing waiting: the main topic's whole retention, ratio 1."""
    size = 0
    sampled: list[int] = []
    age = 0.0
    main = retention.get(main_topic)
    headroom, ratio = (main / 1000 if main is not None else math.inf), 1.0
    worst: tuple[float, float] | None = None  # (headroom, ratio) of the partition nearest deletion
    parts = list(parts)
    for part in parts:
        size += part.lag
        if part.lag <= 0:
            continue
        if part.record_bytes is not None:
            sampled.append(part.record_bytes)
        seconds = part.seconds or 0.0
        age = max(age, seconds)
        keep_ms = retention.get(part.topic)
        if keep_ms is not None:
            left = keep_ms / 1000 - seconds
            if worst is None or left < worst[0]:
                worst = (left, max(0.0, min(1.0, left / (keep_ms / 1000))))
    if worst is not None:
        headroom, ratio = worst
    mean = sum(sampled) / len(sampled) if sampled else 0.0
    estimate = sum(p.lag * (p.record_bytes if p.record_bytes is not None else mean) for p in parts if p.lag > 0)
    return SinkBacklog(sink, size, int(estimate), age, headroom, ratio)


class LagCollector:
    """Collects a `Snapshot` every `interval` seconds and sets the gauges from it."""

    def __init__(
        self,
        kafka: KafkaSettings,
        watched: list[Watched],
        dlqs: Mapping[str, str | None],
        retention: Mapping[str, int | None],
        *,
        interval: float,
        timeout: float = 10.0,
    ) -> None:
        self.kafka = kafka
        self.watched = watched
        self.dlqs = dict(dlqs)
        self.retention = dict(retention)
        self.interval = interval
        self.timeout = timeout
        self.snapshot = Snapshot()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def for_app(cls, settings: Settings, catalog: TopicCatalog) -> LagCollector:
        watched = watched_groups(settings, catalog)
        dlqs = dlq_topics(settings, catalog)
        topics = {t for w in watched for t in w.topics} | set(dlqs)
        return cls(
            settings.kafka,
            watched,
            dlqs,
            {t: retention_ms(catalog, t) for t in topics},
            interval=settings.metrics_interval_sec,
            timeout=max(2.0, min(30.0, settings.metrics_interval_sec * 2)),
        )

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Collect for ever; a round that fails is logged (once per outage) and tried again next period."""
        failing = False
        try:
            while True:
                snapshot = await self.collect()
                self.snapshot = snapshot
                if snapshot.ok:
                    self.apply(snapshot)
                    if failing:
                        log.info("metrics collector reaches the broker again")
                    failing = False
                elif not failing:
                    failing = True
                    log.warning("metrics collector cannot reach the broker", error=snapshot.error)
                await asyncio.sleep(self.interval)
        finally:
            await self.close()

    async def collect(self) -> Snapshot:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                snapshot = await self._collect()
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()  # clients are made again next round
            return Snapshot(at=time.time(), ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        snapshot.duration_sec = time.monotonic() - started
        return snapshot

    async def ping(self) -> dict[str, Any]:
        """A live check of the broker for /health/detailed: one metadata request."""
        admin, _ = await self._clients()
        cluster = await admin.describe_cluster()
        return {"ok": True, "brokers": len(cluster.get("brokers", ())), "controller_id": cluster.get("controller_id")}

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    # -- one round ---------------------------------------------------------------------------------

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:  # a health check and a round may both make them
            return await self._make_clients()

    async def _make_clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        kafka = self.kafka
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=kafka.servers, client_id=f"{kafka.client_id}-metrics", **kafka.client_kwargs()
            )
            self._admin = admin
            await admin.start()
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka.servers,
                client_id=f"{kafka.client_id}-metrics",
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_partition_fetch_bytes=SAMPLE_FETCH_BYTES,
                fetch_max_bytes=1_048_576,
                **kafka.client_kwargs(),
            )
            self._consumer = consumer
            await consumer.start()
        return self._admin, self._consumer

    async def _collect(self) -> Snapshot:
        admin, consumer = await self._clients()
        topics = sorted({t for w in self.watched for t in w.topics} | set(self.dlqs))
        await metadata_of(consumer, topics)
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        highs = await consumer.end_offsets(tps) if tps else {}
        lows = await consumer.beginning_offsets(tps) if tps else {}
        pending: dict[tuple[str, TopicPartition], tuple[int, int]] = {}  # (group, tp) -> (lag, start)
        for watched in self.watched:
            committed = await self._committed(admin, watched.group)
            for tp in tps:
                if tp.topic in watched.topics:
                    offset = committed.get(tp)
                    lag = partition_lag(offset, lows[tp], highs[tp])
                    start = highs[tp] - lag
                    pending[(watched.group, tp)] = (lag, start)
        # Each partition is consumed by one group (Faust's or a sink's): one start offset per partition.
        samples = await self._sample(consumer, {tp: start for (_, tp), (lag, start) in pending.items() if lag > 0})
        now_ms = int(time.time() * 1000)
        parts: list[PartitionLag] = []
        for (group, tp), (lag, _) in pending.items():
            stamp, size = samples.get(tp, (None, None))
            parts.append(PartitionLag(group, tp.topic, tp.partition, lag, lag_seconds(lag, stamp, now_ms), size))
        sinks = {
            w.sink: sink_backlog(w.sink, w.topics[0], (p for p in parts if p.group == w.group), self.retention)
            for w in self.watched
            if w.sink is not None
        }
        dlq = {t: sum(highs[tp] - lows[tp] for tp in tps if tp.topic == t) for t in self.dlqs}
        return Snapshot(at=time.time(), ok=True, partitions=parts, sinks=sinks, dlq=dlq)

    async def _committed(self, admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except KafkaError as exc:  # the coordinator is moving or loading: no commits known this round
            log.debug("committed offsets unavailable", group=group, error=str(exc))
            return {}
        return {tp: meta.offset for tp, meta in offsets.items()}

    async def _sample(
        self, consumer: AIOKafkaConsumer, starts: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """tp -> (timestamp ms, bytes) of the first record at or after its offset in `starts`: one small
        fetch per partition, all partitions at once, for at most 2 seconds."""
        found: dict[TopicPartition, tuple[int, int]] = {}
        if not starts:
            return found
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + min(2.0, self.timeout / 2)
        left = set(starts)
        try:
            while left and time.monotonic() < deadline:
                batch = await consumer.getmany(*left, timeout_ms=200)
                for tp, records in batch.items():
                    if tp in left and records:
                        record = records[0]
                        size = len(record.key or b"") + len(record.value or b"")
                        size += sum(len(k) + len(v or b"") for k, v in record.headers or ())
                        found[tp] = (int(record.timestamp), size)
                        left.discard(tp)
                        consumer.pause(tp)
        finally:
            # Paused, not unassigned: a consumer with no assignment tracks no topic, and aiokafka asks the
            # brokers for every topic of the cluster at once (see metadata_of).
            consumer.pause(*consumer.assignment())
        return found

    # -- the gauges --------------------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Replace the collector's gauges with the snapshot's values (one synchronous block: a scrape
        never sees half a round; partitions that went away disappear)."""
        for gauge in (metrics.GROUP_LAG, metrics.GROUP_LAG_SECONDS, metrics.GROUP_MAX_LAG, metrics.GROUP_SUM_LAG):
            gauge.clear()
        by_group: dict[str, list[int]] = {}
        for part in snapshot.partitions:
            labels = (part.group, part.topic, str(part.partition))
            metrics.GROUP_LAG.labels(*labels).set(part.lag)
            if part.seconds is not None:
                metrics.GROUP_LAG_SECONDS.labels(*labels).set(part.seconds)
            by_group.setdefault(part.group, []).append(part.lag)
        for group, lags in by_group.items():
            metrics.GROUP_MAX_LAG.labels(group).set(max(lags))
            metrics.GROUP_SUM_LAG.labels(group).set(sum(lags))
        for sink, backlog in snapshot.sinks.items():
            metrics.QUEUE_SIZE.labels(sink).set(backlog.queue_size)
            metrics.QUEUE_BYTES.labels(sink).set(backlog.queue_bytes)
            metrics.BACKLOG_AGE.labels(sink).set(backlog.age_sec)
            metrics.RETENTION_HEADROOM.labels(sink).set(backlog.headroom_sec)
            metrics.RETENTION_HEADROOM_RATIO.labels(sink).set(backlog.headroom_ratio)
        metrics.QUEUE_DEPTH.set(sum(b.queue_size for b in snapshot.sinks.values()))
        metrics.QUEUE_TOTAL_BYTES.set(sum(b.queue_bytes for b in snapshot.sinks.values()))
