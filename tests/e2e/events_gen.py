"""Deterministic test streams: unique events plus duplicates spread over other ingest partitions."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass


@dataclass
class Stream:
    messages: list[tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    unique: int
    duplicates: int


def event(n: int) -> dict[str, object]:
    return {
        "timestamp": f"2026-11-22T10:{(n // 60000) % 60:02d}:{(n // 1000) % 60:02d}.{n % 1000:03d}Z",
        "source": f"vessel-{n % 13}",
        "type": "engine.telemetry",
        "labels": {"deck": str(n % 3), "unit": "c"},
        "payload": {"n": n, "temp": 40.5 + n % 10, "ok": n % 2 == 0},
    }


def spelled(obj: dict[str, object], rng: random.Random) -> bytes:
    """The same event written differently: key order and whitespace vary, content does not."""
    items = list(obj.items())
    rng.shuffle(items)
    indent = rng.choice([None, 1])
    return json.dumps(dict(items), indent=indent).encode()


def make_stream(unique: int, duplicates: int, partitions: int, seed: int = 7) -> Stream:
    rng = random.Random(seed)
    messages: list[tuple[int, int, bytes]] = []
    for n in range(unique):
        messages.append((n % partitions, n, spelled(event(n), rng)))
    for _ in range(duplicates):
        n = rng.randrange(unique)
        original = n % partitions
        other = (original + 1 + rng.randrange(partitions - 1)) % partitions
        messages.append((other, n, spelled(event(n), rng)))
    rng.shuffle(messages)
    return Stream(
        messages=[(p, f"vessel-{n % 13}".encode(), raw, []) for p, n, raw in messages],
        unique=unique,
        duplicates=duplicates,
    )
