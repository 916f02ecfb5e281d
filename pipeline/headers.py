"""Kafka header names the pipeline writes and reads. One place, so producers, agents, the DLQ tools and
operators agree. All values are UTF-8 text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# Set by producers (optional).
IDEMPOTENCY_KEY = "idempotency-key"

# Every header the pipeline writes starts with RESERVED_PREFIX. Ingest renames producer headers in that
# namespace (any letter case) to PRODUCER_PREFIX + name, so no producer can set an event's retry attempt,
# due time, origin or hash; every other producer header travels on unchanged.
RESERVED_PREFIX = "pipeline."
PRODUCER_PREFIX = "producer."

# Set by the pipeline on every event it forwards.
EVENT_HASH = "pipeline.event-hash"
ORIGIN_TOPIC = "pipeline.origin.topic"
ORIGIN_PARTITION = "pipeline.origin.partition"
ORIGIN_OFFSET = "pipeline.origin.offset"

# Set on events moved to a retry tier or a DLQ.
ERROR_REASON = "pipeline.error.reason"  # a short code: invalid_json, schema, too_large, fatal, retries_exhausted
ERROR_MESSAGE = "pipeline.error.message"  # the last error, human readable (truncated)
ERROR_CLASS = "pipeline.error.class"  # the last error's class, e.g. SinkTimeout
ERROR_TRACEBACK = "pipeline.error.traceback"  # DLQ only, truncated
FAILED_AT = "pipeline.failed-at"  # RFC 3339 UTC, the latest failure
FIRST_FAILED_AT = "pipeline.retry.first-failed-at"  # RFC 3339 UTC
ATTEMPT = "pipeline.retry.attempt"  # failed delivery attempts so far (1 after the first failure)
DUE_MS = "pipeline.retry.due-ms"  # epoch milliseconds at which the retry tier releases the event
SINK = "pipeline.sink"
FAILED_TOPIC = "pipeline.failed.topic"  # the record whose delivery failed (sink topic or retry tier)
FAILED_PARTITION = "pipeline.failed.partition"
FAILED_OFFSET = "pipeline.failed.offset"

# Set by `pipeline dlq replay` (pipeline.dlq).
REPLAY_COUNT = "pipeline.replay.count"  # times the event was replayed from a DLQ (1 after the first replay)
PARKED_REASON = "pipeline.parked.reason"  # on events replay moved to a parking topic instead
PARKED_AT = "pipeline.parked-at"  # RFC 3339 UTC

MAX_HEADER_VALUE = 4096

Headers = Sequence[tuple[str, bytes]]


def header_value(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None, name: str) -> str | None:
    """The last value of header `name` as text (None when absent or not UTF-8)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: str | None = None
    for key, value in items:
        if key == name and value is not None:
            try:
                found = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                found = None
    return found


def is_reserved(name: str) -> bool:
    return name[: len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX


def from_producer(headers: Iterable[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes]]:
    """A producer's headers as the pipeline keeps them: those in the pipeline's namespace renamed with
    PRODUCER_PREFIX (so they cannot pass for the pipeline's own), all others unchanged."""
    return [
        (PRODUCER_PREFIX + k if is_reserved(k) else k, v if type(v) is bytes else bytes(v or b""))
        for k, v in (headers or ())
    ]


def text(value: object, limit: int = MAX_HEADER_VALUE) -> bytes:
    """Encode a header value, truncating long text so headers stay small."""
    encoded = str(value).encode("utf-8", "replace")
    if len(encoded) > limit:
        encoded = encoded[: limit - 3] + b"..."
    return encoded


def merge(original: Iterable[tuple[str, bytes | None]] | None, added: Mapping[str, object]) -> list[tuple[str, bytes]]:
    """Original headers without the ones being replaced, plus `added` (encoded)."""
    kept = [(k, bytes(v or b"")) for k, v in (original or ()) if k not in added]
    return kept + [(k, text(v)) for k, v in added.items()]
