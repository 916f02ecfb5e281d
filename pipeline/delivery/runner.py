"""Delivery to one sink: its topic and its retry tiers, through its circuit breaker.

One `SinkRunner` per enabled sink per worker, with its own Kafka consumer group
(`<app_id>.deliver.<sink>`), so a sink that is down never slows another sink or the ingest/dedupe agents.
It is plain aiokafka rather than a Faust agent because delivery needs what Faust's agents do not give:
pausing one sink's partitions while its breaker is open, holding a retry-tier partition until its head
event is due, and committing exactly the offsets whose events are written, in a retry tier or in the DLQ.

This module is the loop; the parts are small and each has its own module:
  consumer.py  the consumer Protocol (a fake drives the unit tests), its settings, the poll interval
  pausing.py   which partitions are paused and until when (retry-tier holds, breaker gate, sink pauses)
  writer.py    chunks, permits, rate limits, write timeout, bisection
  reroute.py   produce failed events to their retry tier or the DLQ (bounded attempts)
  offsets.py   what may be committed and where to rewind; what was already done in an earlier round
  routing.py   where a failed event goes and the headers it carries (pure)

One round:
  sink paused (breaker admits nothing, an unwritable retry tier/DLQ's backoff, a rate limit's debt)
                    -> poll with every partition paused: events wait in Kafka (the store-and-forward queue)
  fetch             -> retry-tier records not due yet are sought back and their partition held until due
  write             -> undecodable records and failures whose routing failed earlier skip the write
  nothing written, only retryable failures, breaker now open
                    -> spend no attempt: those events are rewound and wait
  failures          -> each event to its next retry tier, or to the DLQ (fatal, retries spent, undecodable)
  commit            -> per partition up to the first event not done; the rest is rewound, and what is done
                       above it is remembered so it is not written or produced again. The commit goes out
                       while the next round fetches and writes (one in flight, in order; a failed one is
                       sent again with the next); a revocation and a stop wait for it
Any exception between the fetch and the commit rewinds the whole round (what is done is skipped when read again).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from pipeline import headers as h
from pipeline.config import KafkaSettings
from pipeline.delivery.consumer import DeliveryConsumer, Fetched, Record, open_consumer
from pipeline.delivery.expiry import ExpiryWatch
from pipeline.delivery.items import Failure, Item
from pipeline.delivery.offsets import OffsetBook
from pipeline.delivery.pausing import Pausing
from pipeline.delivery.reroute import Rerouter, RouteProducer
from pipeline.delivery.status import RunnerStatus, short_text
from pipeline.delivery.writer import Writer
from pipeline.observability import metrics
from pipeline.reliability.backoff import Backoff
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.sinks.base import Sink, SinkError
from pipeline.sinks.settings import SinkSettings
from pipeline.topics import TopicCatalog

log = structlog.get_logger("pipeline.deliver")

IDLE_POLL_S = 1.0
OPEN_BACKOFF_CAP_S = 30.0
FATAL_OPEN_BACKOFF_CAP_S = 300.0
ROUTE_BACKOFF_CAP_S = 300.0


class SinkRunner:
    def __init__(
        self,
        *,
        sink: Sink,
        settings: SinkSettings,
        catalog: TopicCatalog,
        kafka: KafkaSettings,
        group_id: str,
        producer: RouteProducer,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.name = settings.name
        self.kafka = kafka
        self.group_id = group_id
        self.breaker = breaker
        self.clock = clock
        self.sleep = sleep
        self.main_topic = catalog.sink(self.name).name
        self.tier_topics = [spec.name for spec in catalog.sink_retry(self.name)]
        self.dlq_topic = catalog.sink_dlq(self.name).name
        tier_pattern = catalog.sink_retry_pattern(self.name)
        tiers = tier_pattern or "|".join(re.escape(t) for t in self.tier_topics) or "(?!)"
        self._tier_regex = re.compile(tiers)
        self.pattern = f"^(?:{re.escape(self.main_topic)}|{tiers})$"
        if len(self.tier_topics) != len(settings.retry.tier_delays_ms()):
            raise ValueError(
                f"sink {self.name}: topics.yaml declares {len(self.tier_topics)} retry tiers but the retry "
                f"policy has {len(settings.retry.tier_delays_ms())}"
            )
        self.pausing = Pausing()
        self.book = OffsetBook()
        self.expiry = ExpiryWatch(self.name)
        self.writer = Writer(sink, settings, breaker, sleep=sleep)
        self.rerouter = Rerouter(
            settings,
            producer,
            tier_topics=self.tier_topics,
            tier_labels=metrics.tier_labels(catalog.sink_retry(self.name)),
            dlq_topic=self.dlq_topic,
            rng=rng or random.Random(),
            sleep=sleep,
            clock=clock,
        )
        self.status = RunnerStatus(self.name, breaker)
        self.open_backoff = Backoff(settings.retry, cap_s=OPEN_BACKOFF_CAP_S)
        route_cap = min(ROUTE_BACKOFF_CAP_S, settings.retry.max_backoff_ms / 1000)
        self.route_backoff = Backoff(settings.retry, cap_s=route_cap)
        self.lock = asyncio.Lock()
        self.consumer: DeliveryConsumer | None = None
        self._committing: asyncio.Task[None] | None = None  # the last round's commit, in flight

    def is_tier(self, topic: str) -> bool:
        """A retry tier of this sink, of the current retry policy or an earlier one."""
        return topic in self.tier_topics or bool(self._tier_regex.fullmatch(topic))

    # -- lifecycle ---------------------------------------------------------------------------------

    def reset_positions(self) -> None:
        """A new consumer starts at the committed offsets: the old one's holds and expected offsets go
        (what the book remembers as done stays true)."""
        self.pausing.holds.clear()
        self.pausing.gate_closed = False
        self.expiry.expected.clear()

    async def run(self) -> None:
        self.reset_positions()
        await self.open_sink()
        consumer = open_consumer(
            self.settings, self.kafka, group_id=self.group_id, pattern=self.pattern, listener=_Listener(self)
        )
        self.consumer = consumer
        try:
            await consumer.start()
            log.info("delivery started", sink=self.name, group=self.group_id, topics=self.pattern)
            while True:
                await self.step()
        finally:
            self.consumer = None
            self.status.set_open_state("stopped")
            await self.settle_commit()
            await consumer.stop()
            await self.sink.close()

    async def open_sink(self) -> None:
        """Open the sink, retrying with a growing backoff. A fatal reason (permission denied creating the
        table) is logged as an error and counted, and retried more slowly: an operator can fix it live."""
        while True:
            await self.breaker.wait_until_allowed()
            permit = self.breaker.acquire()
            if permit is None:
                continue
            async with permit:
                try:
                    await self.sink.open()
                except SinkError as exc:
                    fatal = not exc.retryable
                    permit.ignored() if fatal else permit.failure()
                    self.open_backoff.cap_s = FATAL_OPEN_BACKOFF_CAP_S if fatal else OPEN_BACKOFF_CAP_S
                    delay = self.open_backoff.next_delay()
                    self.status.set_open_state("failed" if fatal else "retrying", exc)
                    metrics.SINK_OPEN_FAILURES.labels(self.name, "fatal" if fatal else "retryable").inc()
                    level = log.error if fatal else log.warning
                    level(
                        "sink open failed",
                        sink=self.name,
                        fatal=fatal,
                        error_class=type(exc).__name__,
                        error=short_text(exc),
                        attempt=self.open_backoff.failures,
                        retry_in_sec=delay,
                    )
                    await self.sleep(delay)
                    continue
                permit.success()
            self.open_backoff.reset()
            self.status.set_open_state("open")
            return

    # -- one round ---------------------------------------------------------------------------------

    async def step(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        now = self.clock()
        throttle = self.writer.throttle_wait()
        if throttle > 0:
            self.pausing.pause_sink(now + throttle, "rate limit")
        if self.pausing.set_gate(not self.breaker.available()):
            state = self.breaker.state.value
            message = "breaker open; pausing delivery" if self.pausing.gate_closed else "resuming delivery"
            log.info(message, sink=self.name, state=state)
        self.pausing.apply(consumer, now)
        if self.pausing.sink_paused(now):
            await self._idle(consumer, now)
            return
        fetched: list[Item] = []
        try:
            await self._collect(consumer, fetched)
            if fetched:
                async with self.lock:
                    await self._deliver(consumer, fetched)
            elif self.book.owed():
                async with self.lock:
                    await self._commit(consumer, fetched)
            if not fetched:
                await self._probe_when_idle()
        except Exception:
            # Something unforeseen (a fetch error, a bug): commit nothing more, read again what is not done.
            log.exception("delivery round failed; its events stay in Kafka", sink=self.name, events=len(fetched))
            await self.settle_commit()  # read again from what the commit in flight leaves, not from before it
            self._rewind(consumer, self.book.everything(fetched))
            await self.sleep(IDLE_POLL_S)

    async def _probe_when_idle(self) -> None:
        """A half-open breaker closes on probes that succeed, and probes are writes: with no events to
        write, a sink that is back would stay half-open until the next one. A sink whose health check asks
        the sink itself (`Sink.health_probes_sink`) is asked instead, as one probe."""
        if not self.sink.health_probes_sink or self.breaker.state is not BreakerState.HALF_OPEN:
            return
        permit = self.breaker.acquire()
        if permit is None:
            return
        async with permit:
            try:
                healthy = bool((await self.sink.health()).get("ok"))
            except Exception:
                healthy = False
            permit.success() if healthy else permit.failure()

    async def _idle(self, consumer: DeliveryConsumer, now: float) -> None:
        """Poll with everything paused (keeps the consumer in its group); put back anything returned."""
        if self.pausing.gate_closed:
            wait = self.breaker.seconds_until_half_open() or IDLE_POLL_S
        else:
            wait = self.pausing.idle_timeout(now, IDLE_POLL_S)
        returned = await consumer.getmany(timeout_ms=_poll_ms(min(wait, IDLE_POLL_S)))
        self._fetched(returned)
        self._rewind(consumer, {tp: records[0].offset for tp, records in returned.items() if records})

    async def _collect(self, consumer: DeliveryConsumer, fetched: list[Item]) -> None:
        """Fetch up to one round's events into `fetched` (kept there even if a later call raises)."""
        deadline: float | None = None
        limit = self.settings.batch_size * self.writer.concurrency()
        while len(fetched) < limit:
            if deadline is None:
                timeout = self.pausing.idle_timeout(self.clock(), IDLE_POLL_S)
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            data = await consumer.getmany(timeout_ms=_poll_ms(timeout), max_records=limit - len(fetched))
            if not data:
                break
            for tp, records in data.items():
                fetched.extend(Item.of(tp, r) for r in records)
            self._fetched(data)
            for tp, records in data.items():
                if records and self.is_tier(tp.topic):
                    held_from = self._hold_not_due(consumer, tp, records)
                    if held_from is not None:
                        fetched[:] = [i for i in fetched if i.tp != tp or i.offset < held_from]
            if deadline is None and fetched:
                deadline = time.monotonic() + self._linger_left(fetched)

    def _linger_left(self, fetched: list[Item]) -> float:
        """How long a partial round may still wait for more events. The linger counts from the oldest fetched
        event's Kafka timestamp, as a producer's linger counts from its batch's first record: events that
        arrived while the previous round was writing have waited already, and a round that waits for more
        after them only adds to every event's latency (under load rounds would follow the write time plus a
        full linger each). Never longer than the linger (a producer's clock ahead of this host's)."""
        linger = self.settings.linger_ms / 1000
        oldest_ms: int = min(item.record.timestamp for item in fetched)
        waited = self.clock() - oldest_ms / 1000
        return min(linger, max(0.0, linger - waited))

    def _fetched(self, data: Fetched) -> None:
        for tp, records in data.items():
            if records:
                self.expiry.read(tp, records[0].offset, records[-1].offset)

    def _hold_not_due(self, consumer: DeliveryConsumer, tp: TopicPartition, records: list[Record]) -> int | None:
        """Seek back to the first record not due yet and hold its partition until then; its offset."""
        now_ms = int(self.clock() * 1000)
        for record in records:
            raw = h.header_value(list(record.headers or ()), h.DUE_MS)
            try:
                due = int(raw) if raw else 0
            except ValueError:
                due = 0
            if due > now_ms:
                self._seek(consumer, tp, record.offset)
                self.pausing.hold(tp, due / 1000)
                consumer.pause(tp)
                held: int = record.offset
                return held
        return None

    # -- delivering --------------------------------------------------------------------------------

    async def _deliver(self, consumer: DeliveryConsumer, fetched: list[Item]) -> None:
        """Write, route the failures, commit what is done, rewind the rest."""
        failures: list[Failure] = []
        to_write: list[Item] = []
        for item in fetched:
            if self.book.is_done(item):
                continue
            earlier = self.book.unrouted(item)
            if earlier is not None:
                failures.append(Failure(item, earlier))
            elif item.undecodable is not None:
                failures.append(Failure(item, item.undecodable))
            else:
                to_write.append(item)
        result = await self.writer.write(to_write)
        self.book.mark_done(result.written)
        if result.retry_after:
            self.breaker.trip(f"sink asked to wait {result.retry_after:.1f}s", for_seconds=result.retry_after)
        written_failures = result.failures
        if written_failures and result.retryable_only and self.breaker.state is BreakerState.OPEN:
            # The sink is down or asked us to back off: spend no attempts; the events wait in Kafka.
            first = written_failures[0].error
            log.warning(
                "sink unavailable; batch left in Kafka",
                sink=self.name,
                events=len(written_failures),
                error_class=type(first).__name__,
                error=str(first),
                retry_after=result.retry_after,
            )
            written_failures = []
        failures.extend(written_failures)
        if failures:
            await self._route(failures, result.retry_after)
        await self._commit(consumer, fetched)

    async def _route(self, failures: list[Failure], retry_after: float | None) -> None:
        routed, unrouted, error = await self.rerouter.route(failures, retry_after)
        self.book.mark_done(routed)
        if not unrouted:
            self.route_backoff.reset()
            self.status.route_blocked_until = None
            return
        for failure in unrouted:
            self.book.mark_unrouted(failure.item, failure.error)
        delay = self.route_backoff.next_delay()
        until = self.clock() + delay
        self.pausing.pause_sink(until, "a retry tier or the DLQ cannot be written")
        metrics.SINK_ROUTE_BLOCKED.labels(self.name).inc()
        self.status.route_blocked_until = until
        self.status.last_route_error = short_text(error) if error is not None else None
        log.error(
            "retry tier or DLQ cannot be written; delivery paused, the events stay in Kafka",
            sink=self.name,
            events=len(unrouted),
            error_class=type(error).__name__ if error is not None else None,
            error=short_text(error) if error is not None else None,
            retry_in_sec=delay,
        )

    async def _commit(self, consumer: DeliveryConsumer, fetched: list[Item]) -> None:
        """Rewind what is not done, and send the commit of what is (with any that failed before) once the
        previous one is answered; the next round does not wait for it."""
        planned, rewinds = self.book.plan(fetched)
        self._rewind(consumer, rewinds)
        await self.settle_commit()
        assigned = consumer.assignment()
        commits = {tp: offset for tp, offset in {**self.book.owed(), **planned}.items() if tp in assigned}
        if commits:
            self._committing = asyncio.create_task(self._send_commit(consumer, commits), name=f"commit-{self.name}")

    async def _send_commit(self, consumer: DeliveryConsumer, commits: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(commits)
        except Exception as exc:  # kept and sent again; what is done stays remembered meanwhile
            log.warning("commit failed; it is sent again with the next", sink=self.name, error=str(exc))
            self.book.failed(commits)
        else:
            self.book.committed(commits)

    async def settle_commit(self) -> None:
        """Wait for the commit in flight (a revocation and a stop do, before the partitions move)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await asyncio.shield(committing)

    # -- positions ---------------------------------------------------------------------------------

    def _seek(self, consumer: DeliveryConsumer, tp: TopicPartition, offset: int) -> None:
        consumer.seek(tp, offset)
        self.expiry.moved(tp, offset)

    def _rewind(self, consumer: DeliveryConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        """Seek back; a partition no longer assigned is read by its new owner from its commit. A seek
        that fails raises out of the runner: it restarts from the committed offsets."""
        assigned = consumer.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                self._seek(consumer, tp, offset)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions revoked: their holds, memory, owed commits and expected offsets go with them."""
        self.pausing.forget(tps)
        self.book.forget(tps)
        for tp in tps:
            self.expiry.moved(tp, None)


def _poll_ms(seconds: float) -> int:
    """A poll's timeout in whole milliseconds, rounded up: a wait of a fraction of a millisecond until a
    hold ends must not become a poll that returns at once, round after round."""
    return max(0, math.ceil(seconds * 1000))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in hand finish (written, routed and committed) before the partitions move.
        async with self.runner.lock:
            await self.runner.settle_commit()
            self.runner.forget(revoked)

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
