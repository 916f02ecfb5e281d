"""The Faust app: built from the settings and the topic catalog, with the agents registered in the order
an event flows: ingest -> dedupe -> fan-out -> deliver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
import structlog
from faust.types import TopicT
from mode import CrashingSupervisor

from pipeline.config import Settings
from pipeline.limits import producer_request_bytes
from pipeline.produce import BatchProducer
from pipeline.topics import TopicCatalog, TopicSpec

log = structlog.get_logger("pipeline.worker")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass
class Pipeline:
    """What the agents share: the app, the settings, a Faust topic per declared topic, and the producer of
    the ingest and dedupe agents (one producer: their records share requests, half the produce requests of
    one each)."""

    app: faust.App
    settings: Settings
    catalog: TopicCatalog
    producer: BatchProducer
    topics: dict[str, TopicT] = field(default_factory=dict)

    def topic(self, spec: TopicSpec) -> TopicT:
        if spec.name not in self.topics:
            self.topics[spec.name] = self.app.topic(spec.name, partitions=spec.partitions, internal=False, **RAW)
        return self.topics[spec.name]


def build_app(settings: Settings, catalog: TopicCatalog) -> Pipeline:
    from agents import dedupe, deliver, ingest, watchdog
    from agents.consumer import GaplessConsumer
    from pipeline.web import server as web

    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka.servers],
        broker_credentials=settings.kafka.faust_credentials(),
        broker_client_id=settings.kafka.client_id,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        # Topics come from topics.yaml (`pipeline topics apply`); Faust must not create them with guesses.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=catalog.by_hash.partitions,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        # An agent that dies takes the worker down (exit 1) so that its supervisor (systemd, Kubernetes)
        # restarts it; Faust's default restarts the actor's service but not its coroutine, which leaves
        # a live worker that consumes nothing.
        agent_supervisor=CrashingSupervisor,
        producer_acks=-1,
        producer_compression_type=settings.kafka.compression_codec(),
        producer_max_request_size=producer_request_bytes(catalog),
        broker_max_poll_records=settings.ingest_batch_size,
        broker_max_poll_interval=300.0,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_ms / 1000,
        # Static membership (KIP-345): a worker that restarts within the session timeout keeps its partitions.
        consumer_group_instance_id=settings.kafka.member_instance_id("app"),
        # Acks are manual (after the write or the produce acknowledgement); waiting for "empty" streams
        # at shutdown or rebalance would wait on a sink that may be down. Unacked events are redelivered.
        stream_wait_empty=False,
        table_cleanup_interval=30.0,
        table_standby_replicas=settings.dedupe_standby_replicas,
        # Faust's web server (its /router/ and /table/ views reveal dedupe keys) stays off; the worker's
        # own (pipeline.web) serves metrics, health, admin and ingest.
        web_enabled=False,
    )
    # Our commit rule (never past an offset no agent acked): see agents/consumer.py.
    transport: Any = app.transport
    transport.Consumer = GaplessConsumer
    producer = BatchProducer(
        settings.kafka,
        client_id=f"{settings.kafka.client_id}-agents",
        max_request_size=producer_request_bytes(catalog),
    )
    pipeline = Pipeline(app=app, settings=settings, catalog=catalog, producer=producer)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _log_assignment(sender: Any, assigned: set[Any], **_: Any) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        log.info("partitions assigned", assigned={t: sorted(p) for t, p in sorted(by_topic.items())})

    ingest.register(pipeline)
    dedupe.register(pipeline)
    delivery = deliver.register(pipeline)
    watchdog.register(pipeline)
    web.attach(app, settings, catalog, delivery.breakers, delivery.sinks)
    return pipeline
