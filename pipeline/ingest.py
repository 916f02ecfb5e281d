"""What the ingest agent does with one message, as a pure function: forward the canonical event to the
by-hash topic, or dead-letter the message with its reason. No exception of one message escapes it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline import headers as h
from pipeline.events import AcceptedEvent, Rejection, parse_event
from pipeline.limits import record_bytes

RawHeaders = Iterable[tuple[str, bytes | None]] | None


@dataclass(frozen=True, slots=True)
class Origin:
    topic: str
    partition: int
    offset: int

    def encoded(self) -> list[tuple[str, bytes]]:
        """The origin headers, encoded as headers.merge encodes values (h.text of a Kafka topic name, a
        partition and an offset: short ASCII, so no truncation or replacement applies). The hot path."""
        return [
            (h.ORIGIN_TOPIC, self.topic.encode()),
            (h.ORIGIN_PARTITION, b"%d" % self.partition),
            (h.ORIGIN_OFFSET, b"%d" % self.offset),
        ]

    def headers(self) -> dict[str, object]:
        """The same headers as text, for headers.merge (dead letters)."""
        return {name: value.decode() for name, value in self.encoded()}


@dataclass(frozen=True, slots=True)
class Routed:
    """One record to produce: to the by-hash topic (`rejection` None) or to the ingest DLQ."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    rejection: Rejection | None = None
    accepted: AcceptedEvent | None = None


def route(
    key: bytes | None,
    value: bytes | None,
    headers: RawHeaders,
    origin: Origin,
    *,
    max_event_bytes: int,
    max_record_bytes: int,
) -> Routed:
    """Where one ingest message goes. Producer headers in the pipeline's namespace are renamed
    (headers.from_producer); every other producer header is kept."""
    try:
        kept = h.from_producer(headers)
        accepted = parse_event(value, max_event_bytes, h.header_value(kept, h.IDEMPOTENCY_KEY))
        forward_key = accepted.event_hash.encode()
        # No kept header is in the pipeline's namespace any more (from_producer renamed them), so the
        # pipeline's own are appended without a merge.
        forward_headers = [*kept, *origin.encoded(), (h.EVENT_HASH, forward_key)]
        size = record_bytes(forward_key, accepted.body, forward_headers)
        if size > max_record_bytes:
            raise Rejection(
                "too_large",
                f"the event with its key and headers is {size} bytes; the pipeline writes records of at most "
                f"{max_record_bytes} bytes (max.message.bytes of its topics)",
            )
        return Routed(forward_key, accepted.body, forward_headers, accepted=accepted)
    except Rejection as rejection:
        return dead_letter(key, value, headers, origin, rejection)
    except Exception as exc:  # a bug: the message is dead-lettered all the same
        return dead_letter(key, value, headers, origin, Rejection("unprocessable", f"{type(exc).__name__}: {exc}"))


def dead_letter(key: bytes | None, value: bytes | None, headers: RawHeaders, origin: Origin, why: Rejection) -> Routed:
    """The message byte for byte, with the reason and its origin in headers."""
    added = {
        **origin.headers(),
        h.ERROR_REASON: why.reason,
        h.ERROR_MESSAGE: why.message,
        h.FAILED_AT: datetime.now(UTC).isoformat(),
    }
    return Routed(key, value, h.merge(h.from_producer(headers), added), rejection=why)
