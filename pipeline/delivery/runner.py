"""Delivery to one sink: its topic and its retry tiers, through its circuit breaker.

One `SinkRunner` per enabled sink per worker, with its own Kafka consumer group
(`<app_id>.deliver.<sink>`), so a sink that is down never slows another sink or the ingest/dedupe agents.
It is plain aiokafka rather than a Faust agent because delivery needs what Faust's agents do not give:
pausing one sink's partitions while its breaker is open, holding a retry-tier partition until its head
event is due, and committing exactly the offsets whose events are written, in a retry tier or in the DLQ.

The loop, per batch (size- and linger-bound):
  breaker open      -> pause every partition; events wait in Kafka (the store-and-forward queue)
  retry tier head not due yet -> seek back, pause that partition until it is due
  write succeeded   -> commit
  retryable failure -> if nothing of the batch was written and the breaker is now open (or the sink
                       sent Retry-After): rewind and wait, no attempt is spent; otherwise each event
                       moves to its next retry tier, or to the DLQ once its retries are spent; commit
                       after those produces are acknowledged
  fatal failure     -> bisect the batch so that only the poison events go to the DLQ
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from pipeline import headers as h
from pipeline.config import KafkaSettings
from pipeline.delivery.expiry import ExpiryWatch
from pipeline.delivery.routing import Attempts, Route, failure_headers, route_failure
from pipeline.observability import metrics
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.reliability.ratelimit import TokenBucket
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, Sink, SinkError, SinkRecord, SinkTimeout
from pipeline.sinks.settings import SinkSettings
from pipeline.topics import TopicCatalog

log = structlog.get_logger("pipeline.deliver")

IDLE_POLL_S = 1.0


@dataclass
class Item:
    record: ConsumerRecord[bytes, bytes]
    tp: TopicPartition
    attempts: Attempts
    event_hash: str


@dataclass
class Failure:
    item: Item
    error: SinkError


@dataclass
class Outcome:
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    retryable_failure: bool = False
    success: bool = False
    retry_after: float | None = None


class SinkRunner:
    def __init__(
        self,
        *,
        sink: Sink,
        settings: SinkSettings,
        catalog: TopicCatalog,
        kafka: KafkaSettings,
        group_id: str,
        producer: AIOKafkaProducer,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.name = settings.name
        self.kafka = kafka
        self.group_id = group_id
        self.producer = producer
        self.breaker = breaker
        self.clock = clock
        self.rng = rng or random.Random()
        self.main_topic = catalog.sink(self.name).name
        self.tier_topics = [spec.name for spec in catalog.sink_retry(self.name)]
        self.tier_labels = metrics.tier_labels(catalog.sink_retry(self.name))
        self.dlq_topic = catalog.sink_dlq(self.name).name
        self.holds: dict[TopicPartition, int] = {}  # retry-tier partition -> due epoch ms of its head
        self.expiry = ExpiryWatch(self.name)
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self._gate_closed = False
        self._judged = False
        self.bandwidth = (
            TokenBucket(settings.flush_bandwidth_bytes_per_sec) if settings.flush_bandwidth_bytes_per_sec else None
        )
        self.event_rate = TokenBucket(settings.max_events_per_sec) if settings.max_events_per_sec else None
        if len(self.tier_topics) != len(settings.retry.tier_delays_ms()):
            raise ValueError(
                f"sink {self.name}: topics.yaml declares {len(self.tier_topics)} retry tiers but the retry "
                f"policy has {len(settings.retry.tier_delays_ms())}"
            )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        await self._open_sink()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.servers,
            group_id=self.group_id,
            client_id=f"{self.kafka.client_id}-deliver-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.batch_size,
            max_poll_interval_ms=300_000,
            session_timeout_ms=self.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
            group_instance_id=self.kafka.member_instance_id(f"deliver-{self.name}"),
            **self.kafka.client_kwargs(),
        )
        consumer.subscribe([self.main_topic, *self.tier_topics], listener=_Listener(self))
        self.consumer = consumer
        await consumer.start()
        log.info("delivery started", sink=self.name, group=self.group_id, topics=[self.main_topic, *self.tier_topics])
        try:
            while True:
                await self.step()
        finally:
            self.consumer = None
            await consumer.stop()
            await self.sink.close()

    async def _open_sink(self) -> None:
        attempt = 0
        while True:
            await self.breaker.wait_until_allowed()
            if not self.breaker.allow_request():
                continue
            try:
                await self.sink.open()
            except SinkError as exc:
                self.breaker.record_failure() if exc.retryable else self.breaker.record_ignored()
                attempt += 1
                delay = min(30.0, self.settings.retry.base_delay_ms(min(attempt, 20)) / 1000)
                log.warning("sink open failed", sink=self.name, error=str(exc), attempt=attempt, retry_in_sec=delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.breaker.record_ignored()
                raise
            self.breaker.record_success()
            return

    # -- one round ---------------------------------------------------------------------------------

    async def step(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        self._release_due_holds()
        if not self.breaker.allow_request():
            self._close_gate()
            wait = self.breaker.seconds_until_half_open() or IDLE_POLL_S
            returned = await consumer.getmany(timeout_ms=int(min(wait, IDLE_POLL_S) * 1000))
            self._fetched(returned)
            self._rewind_records(returned)
            return
        batch: list[Item] = []
        self._judged = False
        try:
            self._open_gate()
            batch = await self._collect()
            if batch:
                async with self.lock:
                    await self._deliver(batch)
        except Exception:
            # Producing to a retry tier or the DLQ failed, or something unforeseen: commit nothing,
            # put the batch back and try again; the worker keeps running.
            log.exception("delivery round failed; the batch stays in Kafka", sink=self.name, events=len(batch))
            if batch and self.consumer is not None:
                self._rewind(batch)
            await asyncio.sleep(IDLE_POLL_S)
        finally:
            if not self._judged:  # every allowed request ends with exactly one record_* call
                self.breaker.record_ignored()

    async def _collect(self) -> list[Item]:
        consumer = self.consumer
        assert consumer is not None
        batch: list[Item] = []
        deadline: float | None = None
        limit = self.settings.batch_size * self._concurrency()
        while len(batch) < limit:
            if deadline is None:
                timeout = self._idle_timeout()
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            data = await consumer.getmany(timeout_ms=max(0, int(timeout * 1000)), max_records=limit - len(batch))
            if not data:
                break
            self._fetched(data)
            for tp, records in data.items():
                if tp.topic in self.tier_topics:
                    records = self._hold_not_due(tp, records)
                batch.extend(self._item(tp, r) for r in records)
            if deadline is None and batch:
                deadline = time.monotonic() + self.settings.linger_ms / 1000
        return batch

    def _fetched(self, data: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for tp, records in data.items():
            if records:
                self.expiry.read(tp, records[0].offset, records[-1].offset)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self.consumer is not None
        self.consumer.seek(tp, offset)
        self.expiry.moved(tp, offset)

    def _item(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Item:
        headers = list(record.headers or ())
        key = record.key.decode() if record.key else (h.header_value(headers, h.EVENT_HASH) or "")
        return Item(record=record, tp=tp, attempts=Attempts.from_headers(headers), event_hash=key)

    # -- delivering --------------------------------------------------------------------------------

    async def _deliver(self, batch: list[Item]) -> None:
        """Write, tell the breaker how the sink did, route the failures, commit."""
        outcome = Outcome()
        await self._write_concurrently(batch, outcome)
        if outcome.retryable_failure:
            self.breaker.record_failure()
        elif outcome.success:
            self.breaker.record_success()
        else:
            self.breaker.record_ignored()
        self._judged = True
        if outcome.retry_after:
            self.breaker.trip(f"sink asked to wait {outcome.retry_after:.1f}s", for_seconds=outcome.retry_after)
        nothing_done = outcome.written == 0 and all(f.error.retryable for f in outcome.failures)
        if outcome.failures and nothing_done and self.breaker.state is BreakerState.OPEN:
            # The sink is down or asked us to back off: spend no attempts; the events wait in Kafka.
            self._rewind(batch)
            first = outcome.failures[0].error
            log.warning(
                "sink unavailable; batch left in Kafka",
                sink=self.name,
                events=len(batch),
                error_class=type(first).__name__,
                error=str(first),
                retry_after=outcome.retry_after,
            )
            return
        if outcome.failures:
            await self._route(outcome.failures, outcome.retry_after)
        await self._commit(batch)

    def _concurrency(self) -> int:
        """Requests in flight at once: the sink's cap while closed, a single probe otherwise."""
        if self.breaker.state is BreakerState.CLOSED:
            return self.settings.max_concurrent_requests
        return 1

    async def _write_concurrently(self, batch: list[Item], outcome: Outcome) -> None:
        """Write the collected events as batch_size chunks, at most max_concurrent_requests at once.
        The chunks are judged, routed and committed together, so the commit order is unaffected."""
        size = self.settings.batch_size
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        if len(chunks) == 1:
            await self._write(chunks[0], outcome)
            return
        await asyncio.gather(*(self._write(chunk, outcome) for chunk in chunks))

    async def _write(self, items: list[Item], outcome: Outcome) -> None:
        records = [SinkRecord(event_hash=i.event_hash, body=i.record.value or b"") for i in items]
        if self.bandwidth is not None:
            await self.bandwidth.acquire(self.sink.wire_size(records))
        if self.event_rate is not None:
            await self.event_rate.acquire(len(records))
        started = time.monotonic()
        try:
            written = await asyncio.wait_for(self.sink.write(records), self.settings.retry.timeout_ms / 1000)
        except TimeoutError:
            self._fail(items, SinkTimeout(f"write of {len(items)} events took longer than timeout_ms"), outcome)
            return
        except FatalSinkError as exc:
            if len(items) == 1:
                self._fail(items, exc, outcome)
                return
            middle = len(items) // 2
            await self._write(items[:middle], outcome)
            await self._write(items[middle:], outcome)
            return
        except SinkError as exc:
            self._fail(items, exc, outcome)
            return
        except Exception as exc:  # a bug or an unclassified error: never lose the events over it
            self._fail(items, RetryableSinkError(f"{type(exc).__name__}: {exc}"), outcome)
            log.exception("unclassified sink error", sink=self.name)
            return
        outcome.success = True
        outcome.written += len(items)
        metrics.SINK_WRITE_SECONDS.labels(self.name).observe(time.monotonic() - started)
        metrics.SINK_BATCH_SIZE.labels(self.name).observe(len(items))
        metrics.SINK_WRITTEN.labels(self.name).inc(written)

    def _fail(self, items: list[Item], error: SinkError, outcome: Outcome) -> None:
        metrics.SINK_ERRORS.labels(self.name, type(error).__name__).inc()
        if isinstance(error, SinkTimeout):
            metrics.SINK_TIMEOUTS.labels(self.name).inc()
        if error.retryable:
            outcome.retryable_failure = True
            if error.retry_after is not None:
                outcome.retry_after = max(outcome.retry_after or 0.0, error.retry_after)
        outcome.failures.extend(Failure(item, error) for item in items)

    async def _route(self, failures: list[Failure], retry_after: float | None) -> None:
        now = datetime.now(UTC)
        now_ms = int(now.timestamp() * 1000)
        futures = []
        counts: dict[str, int] = {}
        for failure in failures:
            item = failure.item
            route = route_failure(
                self.settings.retry,
                item.attempts,
                fatal=not failure.error.retryable,
                now_ms=now_ms,
                retry_after_s=retry_after,
                rng=self.rng,
            )
            topic = self.tier_topics[route.tier] if route.kind == "retry" and route.tier is not None else self.dlq_topic
            headers = failure_headers(
                list(item.record.headers or ()),
                sink=self.name,
                event_hash=item.event_hash,
                topic=item.tp.topic,
                partition=item.tp.partition,
                offset=item.record.offset,
                attempts=item.attempts,
                error=failure.error,
                route=route,
                now=now,
            )
            futures.append(
                await self.producer.send(topic, value=item.record.value, key=item.record.key, headers=headers)
            )
            label = _route_label(route)
            counts[label] = counts.get(label, 0) + 1
            if route.kind == "retry":
                metrics.SINK_RETRIES.labels(self.name, self.tier_labels[route.tier or 0]).inc()
            else:
                metrics.SINK_DLQ.labels(self.name, route.reason or "").inc()
        await asyncio.gather(*futures)
        first = failures[0].error
        level = log.error if any(k.startswith("dlq") for k in counts) else log.warning
        item = failures[0].item
        level(
            "delivery failed",
            sink=self.name,
            routed=counts,
            error_class=type(first).__name__,
            error=str(first),
            topic=item.tp.topic,
            partition=item.tp.partition,
            offset=item.record.offset,
            event_hash=item.event_hash,
        )

    async def _commit(self, batch: list[Item]) -> None:
        consumer = self.consumer
        assert consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for item in batch:
            offsets[item.tp] = max(offsets.get(item.tp, 0), item.record.offset + 1)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Delivered again (the sink write is idempotent): by this consumer for the partitions it still
            # has, so their commit does not wait for new traffic, by the new owner for the others.
            log.warning("commit failed; events will be delivered again", sink=self.name, error=str(exc))
            self._rewind(batch)

    # -- pausing and holding -----------------------------------------------------------------------

    def _hold_not_due(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> list[Any]:
        now_ms = int(self.clock() * 1000)
        for index, record in enumerate(records):
            raw = h.header_value(list(record.headers or ()), h.DUE_MS)
            try:
                due = int(raw) if raw else 0
            except ValueError:
                due = 0
            if due > now_ms:
                assert self.consumer is not None
                self._seek(tp, record.offset)
                self.consumer.pause(tp)
                self.holds[tp] = due
                return records[:index]
        return records

    def _release_due_holds(self) -> None:
        if not self.holds or self.consumer is None:
            return
        now_ms = int(self.clock() * 1000)
        assigned = self.consumer.assignment()
        for tp, due in list(self.holds.items()):
            if tp not in assigned:
                del self.holds[tp]
            elif due <= now_ms:
                del self.holds[tp]
                if not self._gate_closed:
                    self.consumer.resume(tp)

    def _idle_timeout(self) -> float:
        if not self.holds:
            return IDLE_POLL_S
        next_due = min(self.holds.values()) / 1000 - self.clock()
        return max(0.0, min(IDLE_POLL_S, next_due))

    def _close_gate(self) -> None:
        assert self.consumer is not None
        if not self._gate_closed:
            log.info("breaker open; pausing delivery", sink=self.name, state=self.breaker.state.value)
        self._gate_closed = True
        self.consumer.pause(*self.consumer.assignment())

    def _open_gate(self) -> None:
        assert self.consumer is not None
        if self._gate_closed:
            log.info("resuming delivery", sink=self.name, state=self.breaker.state.value)
        self._gate_closed = False
        paused = self.consumer.paused()
        resume = [tp for tp in paused if tp not in self.holds]
        if resume:
            self.consumer.resume(*resume)

    def _rewind(self, batch: list[Item]) -> None:
        consumer = self.consumer
        assert consumer is not None
        first: dict[TopicPartition, int] = {}
        for item in batch:
            first[item.tp] = min(first.get(item.tp, item.record.offset), item.record.offset)
        assigned = consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self._seek(tp, offset)

    def _rewind_records(self, data: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        if data:
            self._rewind([self._item(tp, r) for tp, records in data.items() for r in records])


def _route_label(route: Route) -> str:
    return f"retry.{route.tier}" if route.kind == "retry" else f"dlq.{route.reason}"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in hand finish (written, routed and committed) before the partitions move.
        async with self.runner.lock:
            for tp in revoked:
                self.runner.holds.pop(tp, None)
                self.runner.expiry.moved(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.runner.consumer
        if consumer is not None:
            for tp in assigned:
                try:
                    self.runner.expiry.moved(tp, await consumer.committed(tp))
                except KafkaError:
                    self.runner.expiry.moved(tp, None)  # unknown: the first fetch sets it
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        log.info(
            "delivery partitions assigned", sink=self.runner.name, assigned={t: sorted(p) for t, p in by_topic.items()}
        )
