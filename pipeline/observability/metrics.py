"""Prometheus metrics of one worker, in one registry, served at GET /metrics (pipeline.web). Names follow
the seeds (mship_*) where the seeds name the concept, kafka-lag-exporter's for consumer lag, and
pipeline_* for the pipeline's own stages. Labels are bounded: sink, tier, error class, reason, topic,
group, partition; never an event id, a hash or free text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

if TYPE_CHECKING:
    from pipeline.topics import TopicSpec

# No *_created series: they double the series count and nothing charts them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

INGESTED = Counter("pipeline_ingest_events_total", "Events accepted from the ingest topic", registry=REGISTRY)
REJECTED = Counter(
    "pipeline_ingest_rejected_total",
    "Ingest messages sent to the ingest DLQ, by reason",
    ["reason"],
    registry=REGISTRY,
)
FORWARDED = Counter("pipeline_dedupe_forwarded_total", "Unique events fanned out to the sink topics", registry=REGISTRY)
DUPLICATES = Counter(
    "pipeline_dedupe_duplicates_total", "Events dropped as duplicates within the window", registry=REGISTRY
)
REDELIVERED = Counter(
    "pipeline_dedupe_redelivered_total",
    "Records seen again after a restart or rebalance and forwarded again",
    registry=REGISTRY,
)
EXPIRED = Counter(
    "pipeline_dedupe_expired_total", "Dedupe entries removed after the idempotency window", registry=REGISTRY
)
SINK_WRITTEN = Counter(
    "pipeline_sink_events_written_total", "Events written to a sink (new rows)", ["sink"], registry=REGISTRY
)
SINK_EXPIRED = Counter(
    "pipeline_sink_events_expired_total",
    "Events deleted by a sink or retry topic's retention before they were delivered",
    ["sink"],
    registry=REGISTRY,
)
SINK_ERRORS = Counter("mship_sink_error_total", "Failed sink writes", ["sink", "error"], registry=REGISTRY)
SINK_TIMEOUTS = Counter("mship_sink_timeout_total", "Sink writes that timed out", ["sink"], registry=REGISTRY)
SINK_WRITE_SECONDS = Histogram(
    "mship_sink_write_seconds",
    "Time of one batch write to a sink",
    ["sink"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SINK_RETRIES = Counter("mship_sink_retry_total", "Events moved to a retry tier", ["sink", "tier"], registry=REGISTRY)
SINK_DLQ = Counter("mship_sink_dlq_total", "Events dead-lettered by a sink", ["sink", "reason"], registry=REGISTRY)
CIRCUIT_STATE = Gauge(
    "mship_sink_circuit_state", "Circuit breaker state (0=closed, 1=open, 2=half-open)", ["sink"], registry=REGISTRY
)
CIRCUIT_OPENS = Counter("mship_sink_circuit_open_total", "Times a sink's breaker opened", ["sink"], registry=REGISTRY)
SINK_ROUTE_BLOCKED = Counter(
    "pipeline_sink_route_blocked_total",
    "Delivery rounds whose retry-tier or DLQ produce failed after its bounded attempts (the sink then pauses)",
    ["sink"],
    registry=REGISTRY,
)
SINK_OPEN_FAILURES = Counter(
    "pipeline_sink_open_failures_total",
    "Failed attempts to open a sink, by kind (retryable or fatal, e.g. permission denied)",
    ["sink", "kind"],
    registry=REGISTRY,
)
RUNNER_CRASHES = Counter(
    "pipeline_delivery_runner_crashes_total",
    "Delivery runners that crashed on an unexpected error and were restarted",
    ["sink"],
    registry=REGISTRY,
)

SINK_BATCH_SIZE = Histogram(
    "pipeline_sink_batch_size",
    "Events per sink write",
    ["sink"],
    registry=REGISTRY,
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
REREADS = Counter(
    "pipeline_partition_rereads_total", "Partitions read again by the commit watchdog", ["topic"], registry=REGISTRY
)
WORKER_INFO = Gauge(
    "pipeline_worker_info", "Always 1; the worker's version and app id", ["version", "app_id"], registry=REGISTRY
)
BREAKER_ADMIN = Counter(
    "pipeline_breaker_admin_total",
    "Breaker changes made through the admin endpoints (reset, force_open, force_close)",
    ["sink", "action"],
    registry=REGISTRY,
)
BREAKER_FORCED = Gauge(
    "pipeline_breaker_forced",
    "Admin override of a breaker: 0 none, 1 forced open, 2 forced closed",
    ["sink"],
    registry=REGISTRY,
)

# Set by the collector (pipeline.observability.collector) every METRICS_INTERVAL_SEC from the broker.
QUEUE_SIZE = Gauge(
    "mship_sink_queue_size",
    "Records waiting in Kafka for the sink (its topic and retry tiers, not committed by its group)",
    ["sink"],
    registry=REGISTRY,
)
QUEUE_BYTES = Gauge("mship_sink_queue_bytes", "Estimated bytes of mship_sink_queue_size", ["sink"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("mship_queue_depth", "Records waiting in Kafka for all sinks", registry=REGISTRY)
QUEUE_TOTAL_BYTES = Gauge("mship_queue_bytes", "Estimated bytes waiting in Kafka for all sinks", registry=REGISTRY)
GROUP_LAG = Gauge(
    "kafka_consumergroup_group_lag",
    "High watermark minus committed offset",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
GROUP_LAG_SECONDS = Gauge(
    "kafka_consumergroup_group_lag_seconds",
    "Age of the next record the group has not committed (0 when caught up)",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
GROUP_MAX_LAG = Gauge(
    "kafka_consumergroup_group_max_lag", "Largest partition lag of the group", ["group"], registry=REGISTRY
)
GROUP_SUM_LAG = Gauge(
    "kafka_consumergroup_group_sum_lag", "Lag of the group over all partitions", ["group"], registry=REGISTRY
)
BACKLOG_AGE = Gauge(
    "pipeline_sink_backlog_age_seconds",
    "Age of the oldest event not yet written to the sink (0 when none)",
    ["sink"],
    registry=REGISTRY,
)
RETENTION_HEADROOM = Gauge(
    "pipeline_sink_retention_headroom_seconds",
    "Seconds before retention deletes the sink's oldest unwritten event (retention minus its age)",
    ["sink"],
    registry=REGISTRY,
)
RETENTION_HEADROOM_RATIO = Gauge(
    "pipeline_sink_retention_headroom_ratio",
    "Retention headroom as a share of the retention (1 = nothing waits, 0 = being deleted)",
    ["sink"],
    registry=REGISTRY,
)
HTTP_INGEST_REQUESTS = Counter(
    "pipeline_http_ingest_requests_total", "POST /ingest requests by response status", ["status"], registry=REGISTRY
)


def tier_labels(retry_topics: Iterable[TopicSpec]) -> list[str]:
    """The `tier` label of each retry tier of a sink (its delay, as in the topic name: 1s, 5m)."""
    return [spec.tier or str(index) for index, spec in enumerate(retry_topics)]


def init_sink(sink: str, tiers: Sequence[str]) -> None:
    """Create a sink's series at 0, so that rate() and the alert rules see them before the first event."""
    for counter in (SINK_WRITTEN, SINK_EXPIRED, SINK_TIMEOUTS, CIRCUIT_OPENS, SINK_ROUTE_BLOCKED, RUNNER_CRASHES):
        counter.labels(sink)
    for tier in tiers:
        SINK_RETRIES.labels(sink, tier)
    for gauge in (QUEUE_SIZE, QUEUE_BYTES, BACKLOG_AGE, BREAKER_FORCED, CIRCUIT_STATE):
        gauge.labels(sink)
    for histogram in (SINK_WRITE_SECONDS, SINK_BATCH_SIZE):  # the first write is an increase from 0
        histogram.labels(sink)
