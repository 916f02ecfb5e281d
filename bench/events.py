"""The benchmark's events: a deterministic backlog of unique events plus duplicates, each duplicate the same
event written again with another key order and other spacing (so only a content hash sees that it is one).

Pure functions only: no Kafka, no database, no clock (the unit tests run them as they are).
"""

from __future__ import annotations

import collections
import json
import random
from dataclasses import dataclass
from typing import Any

import orjson

# The padding makes an event about EVENT_BYTES long in its compact form, the size the issue measured.
EVENT_BYTES = 260
_NOTE = "steady state, all readings within limits, no operator action needed"


@dataclass(frozen=True)
class Message:
    partition: int
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Backlog:
    messages: list[Message]
    unique: int
    duplicates: int

    @property
    def events(self) -> int:
        return len(self.messages)


def event(n: int, *, sent_at_ms: int | None = None) -> dict[str, Any]:
    """Event number `n` (distinct content for every n). `sent_at_ms` (epoch milliseconds) rides in the payload
    for the latency run: the database row then carries its own publish time. An integer of 13 digits, like
    the backlog's other numbers: the event costs the worker what a backlog event costs."""
    payload: dict[str, Any] = {
        "seq": n,
        "temp_c": round(40.0 + (n % 500) / 10, 1),
        "rpm": 900 + n % 1200,
        "oil_bar": round(3.0 + (n % 250) / 100, 2),
        "ok": n % 17 != 0,
    }
    if sent_at_ms is not None:
        payload["sent_at_ms"] = sent_at_ms
    body: dict[str, Any] = {
        "timestamp": f"2026-11-22T{(n // 3_600_000) % 24:02d}:{(n // 60_000) % 60:02d}:"
        f"{(n // 1000) % 60:02d}.{n % 1000:03d}Z",
        "source": f"vessel-{n % 64:03d}",
        "type": "engine.telemetry",
        "labels": {"deck": str(n % 4), "unit": "celsius", "site": f"north-sea-{n % 8:02d}"},
        "payload": payload,
    }
    spare = EVENT_BYTES - len(orjson.dumps(body)) - len(',"note":""')
    if spare > 0:
        payload["note"] = _NOTE[:spare]
    return body


def compact(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def respell(obj: dict[str, Any], rng: random.Random) -> bytes:
    """The same event written differently: every object's keys in another order (the top level's always
    differs from `obj`'s) and other separators or indentation. The bytes never equal `compact(obj)`."""
    keys = list(obj)
    order = keys[:]
    while len(keys) > 1 and order == keys:
        rng.shuffle(order)
    shuffled = {k: _shuffled(obj[k], rng) for k in order}
    style = rng.choice([(", ", ": ", None), (",", ": ", None), (", ", ":", None), (",", ":", 1), (",", ": ", 2)])
    item_sep, key_sep, indent = style
    return json.dumps(shuffled, separators=(item_sep, key_sep), indent=indent, ensure_ascii=False).encode()


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    return value


def check_share(duplicate_share: float) -> None:
    if not 0.0 <= duplicate_share < 1.0:
        raise ValueError(f"the duplicate share must be in [0, 1), got {duplicate_share}")


def split(events: int, duplicate_share: float) -> tuple[int, int]:
    """(unique, duplicates) for a backlog of `events` messages with that share of duplicates."""
    if events < 1:
        raise ValueError("a backlog needs at least one event")
    check_share(duplicate_share)
    duplicates = min(round(events * duplicate_share), events - 1)
    return events - duplicates, duplicates


class LiveMix:
    """The latency run's load: the backlog's mix, offered live. Message number i is a duplicate when the
    share says so (exactly `duplicate_share` of every run of messages, evenly spread): a re-serialised copy of
    one of the last `recent` unique events; otherwise the next unique event, from `first` on. Counts what it
    made: messages (`sent`), unique events (`unique`) and those of them that carry a publish time (`stamped`,
    the rows the latency is measured on)."""

    def __init__(self, duplicate_share: float, *, first: int, seed: int = 9, recent: int = 10_000) -> None:
        check_share(duplicate_share)
        self.share, self.next_unique = duplicate_share, first
        self.sent = self.unique = self.stamped = 0
        self.rng = random.Random(seed)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=recent)

    def next(self, sent_at_ms: int | None) -> tuple[dict[str, Any], bytes, bool]:
        """(the event, its message value, whether it is a new unique event)."""
        i, self.sent = self.sent, self.sent + 1
        if self.recent and int((i + 1) * self.share) > int(i * self.share):
            body = self.rng.choice(self.recent)
            return body, respell(body, self.rng), False
        body = event(self.next_unique, sent_at_ms=sent_at_ms)
        self.next_unique += 1
        self.unique += 1
        self.stamped += sent_at_ms is not None
        self.recent.append(body)
        return body, compact(body), True


# The publish time a prepared message carries until it is sent: 13 digits, as a time in epoch milliseconds has.
STAMP = 1_111_111_111_111
_STAMP = b"%d" % STAMP


@dataclass(frozen=True, slots=True)
class Scripted:
    """One message of a prepared live mix, its value cut where its publish time goes: `head + stamp + tail`
    (the tail and the stamp empty when it carries none: `origin` -1). `origin` is the unique event whose
    publish time it carries (a duplicate carries its original's); `new` marks the message of a unique event
    that carries one: its send fixes the time."""

    key: bytes
    head: bytes
    tail: bytes
    origin: int
    new: bool

    def value(self, stamp: bytes) -> bytes:
        return self.head + stamp + self.tail


def script(mix: LiveMix, total: int, *, measured_from: int) -> list[Scripted]:
    """The next `total` messages of `mix`, made before the run so that offering them costs the load generator
    a byte join per message: the unique events from the `measured_from`th message on (and their duplicates)
    carry a publish time."""
    prepared = []
    for _ in range(total):
        body, value, new = mix.next(STAMP if mix.sent >= measured_from else None)
        key = str(body["source"]).encode()
        if "sent_at_ms" not in body["payload"]:
            prepared.append(Scripted(key, value, b"", -1, False))
            continue
        head, stamp, tail = value.partition(_STAMP)
        if not stamp or _STAMP in tail:
            raise ValueError(f"the publish time's placeholder is not once in {value!r}")
        prepared.append(Scripted(key, head, tail, body["payload"]["seq"], new))
    return prepared


def make_backlog(events: int, duplicate_share: float, partitions: int, *, seed: int = 9, first: int = 0) -> Backlog:
    """`events` messages: unique events `first`..`first + unique - 1` in compact form, and duplicates of
    randomly chosen ones re-serialised, all shuffled together and spread evenly over the partitions (a
    duplicate usually lands on another partition than its original). Keyed by source, as a producer would."""
    unique, duplicates = split(events, duplicate_share)
    rng = random.Random(seed)
    picks = [(n, False) for n in range(first, first + unique)]
    picks += [(first + rng.randrange(unique), True) for _ in range(duplicates)]
    rng.shuffle(picks)
    messages = []
    for index, (n, duplicate) in enumerate(picks):
        body = event(n)
        value = respell(body, rng) if duplicate else compact(body)
        messages.append(Message(index % partitions, str(body["source"]).encode(), value))
    return Backlog(messages=messages, unique=unique, duplicates=duplicates)
