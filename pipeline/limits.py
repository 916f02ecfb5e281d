"""Message sizes from producer to topic, derived from one setting so that they line up.

INGEST_MAX_EVENT_BYTES (E) bounds an event's body, as it arrives and in its canonical form. Around it:

- the ingest topic takes records of E + ENVELOPE_BYTES (the key and the producer's headers);
- every topic the pipeline writes (by-hash, sink, retry tiers, DLQs) takes records of that plus another
  ENVELOPE_BYTES for the pipeline's own headers (error text and tracebacks are truncated to 4 KiB each),
  so whatever the ingest topic accepted can be forwarded or dead-lettered;
- the pipeline's producers send requests of up to that same size (Kafka's max_request_size).

topics.yaml gets the two topic sizes as `{ingest_message_bytes}` and `{message_bytes}`; `check_limits`
refuses to start a worker whose topic catalog does not hold them, and `check_cluster_sizes` one whose topics
on the cluster do not (with TOPICS_AUTO_APPLY=false nothing else would raise them). An event that still cannot be
forwarded (its canonical body over E, or producer headers filling the envelope) goes to the ingest DLQ
as `too_large`: never a produce error out of an agent.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.config import ConfigError
from pipeline.topics import TopicCatalog, TopicPlan, TopicSpec

ENVELOPE_BYTES = 64 * 1024
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's message.max.bytes default
MAX_MESSAGE_BYTES = "max.message.bytes"
WRITTEN_ROLES = ("by_hash", "ingest_dlq", "ingest_parked", "sink", "sink_retry", "sink_dlq", "sink_parked")


def ingest_message_bytes(max_event_bytes: int) -> int:
    """max.message.bytes of the ingest topic."""
    return max_event_bytes + ENVELOPE_BYTES


def message_bytes(max_event_bytes: int) -> int:
    """max.message.bytes of every topic the pipeline writes."""
    return ingest_message_bytes(max_event_bytes) + ENVELOPE_BYTES


def message_bytes_vars(max_event_bytes: int) -> dict[str, int]:
    """The topics.yaml template variables."""
    return {
        "ingest_message_bytes": ingest_message_bytes(max_event_bytes),
        "message_bytes": message_bytes(max_event_bytes),
    }


def topic_max_message_bytes(spec: TopicSpec) -> int:
    value = spec.config.get(MAX_MESSAGE_BYTES)
    return int(value) if value is not None else BROKER_DEFAULT_MAX_MESSAGE_BYTES


def producer_request_bytes(catalog: TopicCatalog) -> int:
    """max_request_size for the pipeline's producers: the largest record the pipeline may write, i.e.
    whatever the ingest topic accepted plus the pipeline's headers."""
    return topic_max_message_bytes(catalog.ingest) + ENVELOPE_BYTES


def record_bytes(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """The size the Kafka producer counts for one record against max_request_size."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


class LimitsError(ConfigError):
    """The size settings do not line up; the message names them."""


def check_limits(max_event_bytes: int, catalog: TopicCatalog) -> None:
    """Raise LimitsError unless the ingest topic takes an event of INGEST_MAX_EVENT_BYTES with its
    envelope and every topic the pipeline writes takes the largest record its producers may send."""
    source = f" ({catalog.source})" if catalog.source else ""
    ingest = topic_max_message_bytes(catalog.ingest)
    needed = ingest_message_bytes(max_event_bytes)
    if ingest < needed:
        raise LimitsError(
            f"INGEST_MAX_EVENT_BYTES={max_event_bytes} needs the ingest topic {catalog.ingest.name!r} to "
            f"take {needed} bytes (the event plus {ENVELOPE_BYTES} for key and headers), but topics.yaml"
            f"{source} gives it {MAX_MESSAGE_BYTES}={ingest}: raise {MAX_MESSAGE_BYTES} "
            f'(e.g. "{{ingest_message_bytes}}") or lower INGEST_MAX_EVENT_BYTES'
        )
    request = producer_request_bytes(catalog)
    for role in WRITTEN_ROLES:
        for spec in catalog.role(role):
            have = topic_max_message_bytes(spec)
            if have < request:
                raise LimitsError(
                    f"topic {spec.name!r} ({role}) takes records of {MAX_MESSAGE_BYTES}={have} bytes, but the "
                    f"pipeline's producers send up to max_request_size={request} (the ingest topic's "
                    f"{MAX_MESSAGE_BYTES}={ingest} plus {ENVELOPE_BYTES} for the pipeline's headers; "
                    f"INGEST_MAX_EVENT_BYTES={max_event_bytes}): set its {MAX_MESSAGE_BYTES} in topics.yaml"
                    f'{source} to at least {request} (e.g. "{{message_bytes}}")'
                )


def check_cluster_sizes(plan: TopicPlan, max_event_bytes: int) -> None:
    """Raise LimitsError naming every topic whose max.message.bytes on the cluster (unset: the broker
    default) is below what topics.yaml gives it, i.e. below what the pipeline writes or ingest accepts."""
    short: list[str] = []
    for change in plan.changes:
        want = change.updates.get(MAX_MESSAGE_BYTES) if change.kind == "alter_config" else None
        if want is None:
            continue
        have = change.current.get(MAX_MESSAGE_BYTES)
        live = int(have) if have is not None else BROKER_DEFAULT_MAX_MESSAGE_BYTES
        if live < int(want):
            short.append(f"{change.topic!r} has {MAX_MESSAGE_BYTES}={live}, needs {want}")
    if short:
        raise LimitsError(
            f"INGEST_MAX_EVENT_BYTES={max_event_bytes} needs larger records than these topics take: "
            + "; ".join(short)
            + " (run `pipeline topics apply`, or set TOPICS_AUTO_APPLY=true)"
        )
