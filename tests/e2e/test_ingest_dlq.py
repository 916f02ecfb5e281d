"""Malformed input on the ingest topic: each bad message lands in the ingest DLQ, byte for byte, with
its reason and origin in headers, while the good events around it are delivered."""

from __future__ import annotations

import json

import pytest

from pipeline import headers as h
from pipeline.observability.lag import group_lag
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import count_rows, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIMIT = 4096

BAD: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b"this is not json {", "invalid_json"),
    "truncated": (b'{"timestamp": "2026-11-22T10:00:00Z", "source": "a"', "invalid_json"),
    "nan": (
        b'{"timestamp": "2026-11-22T10:00:00Z", "source": "a", "type": "t", "payload": NaN}',
        "invalid_json",
    ),
    "array": (b"[1, 2, 3]", "schema"),
    "wrong-types": (b'{"timestamp": "yesterday", "source": 42, "type": ["t"], "labels": {"a": 1}}', "schema"),
    "missing-fields": (b'{"payload": {"x": 1}}', "schema"),
    "unknown-field": (
        b'{"timestamp": "2026-11-22T10:00:00Z", "source": "a", "type": "t", "colour": 1}',
        "schema",
    ),
    "naive-time": (b'{"timestamp": "2026-11-22T10:00:00", "source": "a", "type": "t"}', "schema"),
    "empty": (b"", "empty"),
    "whitespace": (b"  \n ", "empty"),
    "tombstone": (None, "empty"),
    "too-large": (
        json.dumps({**event(1), "payload": {"blob": "x" * (2 * LIMIT)}}).encode(),
        "too_large",
    ),
    "latin-1": (
        '{"timestamp": "2026-11-22T10:00:00Z", "source": "Zürich", "type": "t"}'.encode("latin-1"),
        "invalid_utf8",
    ),
    "lone-surrogate": (
        b'{"timestamp": "2026-11-22T10:00:00Z", "source": "a", "type": "t", "payload": "\\ud800"}',
        "schema",
    ),
}


async def test_malformed_messages_go_to_the_ingest_dlq_with_reasons(stack: Stack) -> None:
    stack.extra_env["INGEST_MAX_EVENT_BYTES"] = str(LIMIT)
    result = run_cli("topics", "apply", env=stack.env())
    assert result.returncode == 0, result.stderr
    good = [json.dumps(event(n)).encode() for n in range(200)]
    messages: list[tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for n, raw in enumerate(good):
        messages.append((n % stack.partitions, None, raw, []))
        if n % 14 == 0 and n // 14 < len(BAD):
            name = list(BAD)[n // 14]
            messages.append((n % stack.partitions, name.encode(), BAD[name][0], [("trace-id", name.encode())]))
    await produce(stack.bootstrap, stack.ingest_topic, messages)
    stack.worker()

    async def progress() -> tuple[int, int | None]:
        return await count_rows(stack.dsn, stack.table), await group_lag(
            stack.bootstrap, stack.app_id, stack.ingest_topic
        )

    await poll(progress, lambda v: v == (len(good), 0), timeout=120, what="good events delivered, ingest drained")
    dead = await read_topic(stack.bootstrap, f"{stack.ingest_topic}.dlq")
    by_name = {r.key.decode(): r for r in dead if r.key}
    assert sorted(by_name) == sorted(BAD), f"DLQ keys: {sorted(by_name)}"
    assert len(dead) == len(BAD)
    for name, (sent, reason) in BAD.items():
        record = by_name[name]
        assert record.value == sent or (sent is None and not record.value), name
        assert record.headers[h.ERROR_REASON].decode() == reason, (name, record.headers)
        assert record.headers[h.ERROR_MESSAGE], name
        assert record.headers[h.ORIGIN_TOPIC].decode() == stack.ingest_topic
        assert int(record.headers[h.ORIGIN_OFFSET]) >= 0
        assert record.headers["trace-id"] == name.encode(), "producer headers are kept"
    assert stack.workers[0].running, "bad input must not stop the worker"
