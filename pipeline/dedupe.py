"""The dedupe decision, kept free of Faust so it can be tested on its own.

The dedupe table maps event hash -> where and when the event was first forwarded:
`{"t": first_seen_ms, "p": partition, "o": offset}` of its record on the by-hash topic. Storing the
origin makes redelivery safe: if a worker dies after the table entry reached its changelog but before
its offset was committed, the same record (same partition and offset) comes back; it is forwarded again
instead of being mistaken for a duplicate (the sinks' idempotent writes absorb the second copy).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson


class Decision(enum.Enum):
    FORWARD = "forward"  # first sighting within the window
    REDELIVERY = "redelivery"  # the very record seen before, delivered again: forward again
    DUPLICATE = "duplicate"  # another record with a hash seen within the window: drop


@dataclass(frozen=True, slots=True)
class Seen:
    first_seen_ms: int
    partition: int
    offset: int

    def to_json(self) -> dict[str, int]:
        return {"t": self.first_seen_ms, "p": self.partition, "o": self.offset}

    def to_bytes(self) -> bytes:
        """The JSON text of `to_json()`: the table's value bytes, in its store and on its changelog."""
        return orjson.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Seen | None:
        if raw is None:
            return None
        try:
            return cls.from_json(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return None

    @classmethod
    def from_json(cls, value: Any) -> Seen | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(int(value["t"]), int(value["p"]), int(value["o"]))
        except (KeyError, TypeError, ValueError):
            return None


def decide(entry: Seen | None, *, now_ms: int, window_ms: int, partition: int, offset: int) -> Decision:
    if entry is None or is_expired(entry, now_ms=now_ms, window_ms=window_ms):
        return Decision.FORWARD
    if entry.partition == partition and entry.offset == offset:
        return Decision.REDELIVERY
    return Decision.DUPLICATE


def is_expired(entry: Seen, *, now_ms: int, window_ms: int) -> bool:
    return now_ms - entry.first_seen_ms >= window_ms
