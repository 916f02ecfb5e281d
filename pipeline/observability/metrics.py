"""Prometheus metrics of one worker, in one registry. Names follow the seeds (mship_*) where the seeds
name the concept; the pipeline's own stages use pipeline_*. The metrics issue exposes and charts them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
SINK_RETRIES = Counter("mship_sink_retry_total", "Events moved to a retry tier", ["sink"], registry=REGISTRY)
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
