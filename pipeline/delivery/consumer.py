"""The Kafka consumer as delivery sees it: a Protocol (so unit tests drive delivery with a fake that can
fail at every call), the aiokafka consumer that implements it, and the poll interval derived from the
sink's settings.

Delivery reads committed records only (`isolation_level="read_committed"`): DLQ replay and import tools
write sink topics in transactions, and an aborted transaction must never reach a sink.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.config import ConfigError, KafkaSettings
from pipeline.sinks.settings import SinkSettings

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Fetched: TypeAlias = dict[TopicPartition, list[Record]]

# One produce to a retry tier or the DLQ: attempts, and how long one attempt may take.
ROUTE_ATTEMPTS = 3
ROUTE_ATTEMPT_TIMEOUT_S = 5.0
ROUTE_RETRY_PAUSE_S = 0.5
POLL_INTERVAL_MARGIN_S = 60.0
MIN_POLL_INTERVAL_S = 300.0
# How long the broker may hold a fetch that has no data yet. aiokafka sends one fetch per broker at a time and
# leaves out the partitions whose records are still buffered, so a fetch sent while delivery writes can hold
# only idle partitions (the retry tiers): the broker keeps it this long, and the sink topic's records wait
# behind it (tests/e2e/test_delivery_fetch_wait.py). aiokafka's default of 500 ms was a stall of half a
# second in the delivery hop; an idle consumer pays for the shorter wait with 20 empty fetches a second.
FETCH_MAX_WAIT_MS = 50


class DeliveryConsumer(Protocol):
    """The calls delivery makes on its consumer (aiokafka's AIOKafkaConsumer has them all)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...


def write_window_s(settings: SinkSettings) -> float:
    """How long after a round's first write the writer may still start another one (bisection, chunks
    waiting on a rate limit): one write timeout. Later chunks wait for the next round."""
    return settings.retry.timeout_ms / 1000


def round_budget_s(settings: SinkSettings) -> float:
    """The longest one delivery round can take between two polls: the linger, the write window plus the
    last write started in it, and routing the failures (bounded produce attempts)."""
    routing = ROUTE_ATTEMPTS * ROUTE_ATTEMPT_TIMEOUT_S + (ROUTE_ATTEMPTS - 1) * ROUTE_RETRY_PAUSE_S
    return settings.linger_ms / 1000 + write_window_s(settings) + settings.retry.timeout_ms / 1000 + routing


def max_poll_interval_ms(settings: SinkSettings) -> int:
    """`max.poll.interval.ms` of the sink's consumer: a round never outlasts it, so a slow sink (the
    satcom profile's 300 s write timeout) does not get the worker evicted from its group."""
    return int(max(MIN_POLL_INTERVAL_S, round_budget_s(settings) + POLL_INTERVAL_MARGIN_S) * 1000)


def check_poll_interval(settings: SinkSettings, kafka: KafkaSettings) -> int:
    """The derived interval, checked against the group settings at start (a ConfigError names them)."""
    interval = max_poll_interval_ms(settings)
    if interval <= round_budget_s(settings) * 1000:
        raise ConfigError(
            f"sink {settings.name}: max.poll.interval.ms {interval} does not cover one delivery round "
            f"({round_budget_s(settings):.0f}s from linger_ms and timeout_ms)"
        )
    if kafka.session_timeout_ms >= interval:
        raise ConfigError(
            f"kafka.session_timeout_ms ({kafka.session_timeout_ms}) must be below the delivery consumer's "
            f"max.poll.interval.ms ({interval}) of sink {settings.name}"
        )
    return interval


def open_consumer(
    settings: SinkSettings,
    kafka: KafkaSettings,
    *,
    group_id: str,
    pattern: str,
    listener: ConsumerRebalanceListener,
) -> AIOKafkaConsumer:
    """The sink's consumer (not started), subscribed to every topic matching `pattern`: its topic and
    every retry tier topic of the sink, including tiers of an earlier retry policy."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.servers,
        group_id=group_id,
        client_id=f"{kafka.client_id}-deliver-{settings.name}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.batch_size,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_poll_interval_ms=check_poll_interval(settings, kafka),
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        group_instance_id=kafka.member_instance_id(f"deliver-{settings.name}"),
        metadata_max_age_ms=60_000,  # a tier topic created later is found within a minute
        **kafka.client_kwargs(),
    )
    consumer.subscribe(pattern=pattern, listener=listener)
    return consumer
