"""Kafka header names the pipeline writes and reads. One place, so producers, agents, the DLQ tools and
operators agree. All values are UTF-8 text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# Set by producers (optional).
IDEMPOTENCY_KEY = "idempotency-key"

# Set by the pipeline on every event it forwards.
EVENT_HASH = "pipeline.event-hash"
ORIGIN_TOPIC = "pipeline.origin.topic"
ORIGIN_PARTITION = "pipeline.origin.partition"
ORIGIN_OFFSET = "pipeline.origin.offset"

# Set on dead-lettered events.
ERROR_REASON = "pipeline.error.reason"  # a short code: invalid_json, schema, too_large, ...
ERROR_MESSAGE = "pipeline.error.message"  # a human explanation (truncated)
ERROR_CLASS = "pipeline.error.class"
FAILED_AT = "pipeline.failed-at"  # RFC 3339 UTC
SINK = "pipeline.sink"

MAX_HEADER_VALUE = 2048

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
