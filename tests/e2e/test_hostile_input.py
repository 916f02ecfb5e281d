"""A hostile producer against one worker (default INGEST_MAX_EVENT_BYTES, 1 MiB): events whose timestamp
overflows once converted to UTC, an event that grows past the limit when canonicalised, a valid event
near the limit, forged pipeline headers and numbers beyond float precision, among good events. The bad
ones land in the ingest DLQ with their reason, every good one is delivered exactly, the ingest group's
commit reaches the end of the topic, and the worker keeps running.

One worker run (module fixture) serves the tests below; each checks one promise."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline import headers as h
from pipeline.events import parse_event
from pipeline.observability.lag import group_lag
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.leftovers import new_uid
from tests.support import Record, count_rows, fetch, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIMIT = 1_048_576
GOOD_COUNT = 200


def raw_event(payload: str, n: int = 0, timestamp: str = "2026-11-22T10:00:00Z") -> bytes:
    return (
        f'{{"timestamp": "{timestamp}", "source": "hostile", "type": "t", "labels": {{"n": "{n}"}}, '
        f'"payload": {payload}}}'
    ).encode()


# name -> (message, reason, a word the reason's message must contain)
BAD: dict[str, tuple[bytes, str, str]] = {
    **{
        f"overflow-{n}": (raw_event("{}", n, ts), "schema", "timestamp")
        for n, ts in enumerate(
            [
                "9999-12-31T23:59:59-00:01",
                "9999-12-31T22:00:00-05:00",
                "9999-12-31T23:59:59.999999-23:59",
                "0001-01-01T00:00:00+00:01",
                "0001-01-01T05:00:00+14:00",
            ]
        )
    },
    # 1 MB as sent, 4.4 MB once each 1e20 is written out as 21 digits.
    "grows-when-canonical": (raw_event("[" + ",".join(["1e20"] * 200_000) + "]"), "too_large", "canonical"),
}
NEAR_LIMIT = raw_event(json.dumps("x" * (LIMIT - 200)), 1)  # over the Faust producer's default 1,000,000
FORGED = [
    (h.ATTEMPT, b"99"),
    (h.DUE_MS, b"99999999999999"),
    (h.FIRST_FAILED_AT, b"2000-01-01T00:00:00Z"),
    (h.ORIGIN_OFFSET, b"-5"),
    (h.EVENT_HASH, b"0" * 64),
    ("trace-id", b"kept"),
]
# Numbers that differ only past float precision (or beyond 64 bits) are different events, stored exactly.
EXACT = {
    "a": "0.1",
    "b": "0.10000000000000000001",
    "c": str(2**100 + 1),
    "d": str(2**100 + 2),
    "e": "123456789012345678901234567890.000000000000000000001",
    "f": "1e21",
}


@dataclass
class Outcome:
    stack: Stack
    dlq: list[Record]
    sink: list[Record]


@pytest.fixture(scope="module")
async def outcome(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Outcome]:
    stack = Stack(kafka_bootstrap, postgres_dsn, new_uid(), Path(tmp_path_factory.mktemp("hostile")))
    try:
        assert run_cli("topics", "apply", env=stack.env()).returncode == 0
        messages: list[tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        bad = iter(BAD.items())
        for n in range(GOOD_COUNT):
            headers = FORGED if n % 50 == 0 else []
            messages.append((n % stack.partitions, b"good", json.dumps(event(n)).encode(), headers))
            if n % 30 == 0:
                name, (raw, _, _) = next(bad, (None, (b"", "", "")))
                if name is not None:
                    messages.append((n % stack.partitions, name.encode(), raw, []))
        messages.append((0, b"near-limit", NEAR_LIMIT, []))
        messages += [(1, b"exact", raw_event(f'{{"v": {v}}}', 0), [("exact", k.encode())]) for k, v in EXACT.items()]
        for name, (raw, _, _) in bad:
            messages.append((2, name.encode(), raw, []))
        await produce(stack.bootstrap, stack.ingest_topic, messages)
        # Records on the by-hash topic that ingest did not write (a replay or import tool): no valid key.
        by_hash = f"{stack.ingest_topic}.by-hash"
        await produce(stack.bootstrap, by_hash, [(0, None, b"no key", []), (1, b"\xff\xfe", b"not UTF-8", [])])
        worker = stack.worker()
        expected = GOOD_COUNT + 1 + len(EXACT)

        async def progress() -> tuple[int, int | None]:
            rows = await count_rows(stack.dsn, stack.table)
            return rows, await group_lag(stack.bootstrap, stack.app_id, stack.ingest_topic)

        try:
            await poll(
                progress, lambda v: v == (expected, 0), timeout=150, what="good events delivered, ingest drained"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{worker.tail()}") from None
        dlq = await read_topic(stack.bootstrap, f"{stack.ingest_topic}.dlq")
        sink = await read_topic(stack.bootstrap, stack.sink_topic())
        yield Outcome(stack, dlq, sink)
    finally:
        for w in stack.workers:
            if w.running:
                w.stop()


def test_bad_events_are_dead_lettered_with_their_reason_and_the_worker_carries_on(outcome: Outcome) -> None:
    from_ingest = [r for r in outcome.dlq if r.headers[h.ORIGIN_TOPIC] == outcome.stack.ingest_topic.encode()]
    by_name = {r.key.decode(): r for r in from_ingest if r.key}
    assert sorted(by_name) == sorted(BAD) and len(from_ingest) == len(BAD)
    for name, (raw, reason, word) in BAD.items():
        record = by_name[name]
        assert record.value == raw, name
        assert record.headers[h.ERROR_REASON].decode() == reason, (name, record.headers)
        assert word in record.headers[h.ERROR_MESSAGE].decode(), (name, record.headers[h.ERROR_MESSAGE])
    assert outcome.stack.workers[0].running, "bad input must not stop the worker"
    assert not outcome.stack.workers[0].logged("Crashed reason")


async def test_by_hash_records_without_a_valid_key_are_dead_lettered(outcome: Outcome) -> None:
    from_by_hash = [r for r in outcome.dlq if r.headers[h.ORIGIN_TOPIC].endswith(b".by-hash")]
    assert sorted(((r.key, r.value) for r in from_by_hash), key=repr) == sorted(
        [(None, b"no key"), (b"\xff\xfe", b"not UTF-8")], key=repr
    )
    assert {r.headers[h.ERROR_REASON] for r in from_by_hash} == {b"unprocessable"}


async def test_a_valid_event_near_the_size_limit_is_delivered(outcome: Outcome) -> None:
    # Delivered at all is the point (the fixture waited for every good event); its body is intact.
    expected = parse_event(NEAR_LIMIT, LIMIT)
    rows = await fetch(
        outcome.stack.dsn,
        f"SELECT length(payload #>> '{{}}') AS n FROM {outcome.stack.table} WHERE event_hash = $1",
        expected.event_hash,
    )
    assert [r["n"] for r in rows] == [LIMIT - 200]


def test_forged_pipeline_headers_do_not_pass_for_the_pipelines_own(outcome: Outcome) -> None:
    forged = [r for r in outcome.sink if r.headers.get("trace-id") == b"kept"]
    assert len(forged) == len(range(0, GOOD_COUNT, 50))
    for record in forged:
        for name, value in FORGED:
            if name.startswith(h.RESERVED_PREFIX):
                assert record.headers.get(h.PRODUCER_PREFIX + name) == value, name
                assert record.headers.get(name) != value, name
        assert h.ATTEMPT not in record.headers and h.DUE_MS not in record.headers
        assert record.key is not None and record.headers[h.EVENT_HASH] == record.key
        assert int(record.headers[h.ORIGIN_OFFSET]) >= 0


async def test_numbers_are_exact_in_the_hash_and_in_postgresql(outcome: Outcome) -> None:
    rows = await fetch(
        outcome.stack.dsn,
        f"SELECT payload->>'v' AS text, (payload->>'v')::numeric AS value FROM {outcome.stack.table} "
        "WHERE source = 'hostile' AND payload ? 'v'",
    )
    stored = sorted(Decimal(r["text"]) for r in rows)
    assert stored == sorted(Decimal(v) for v in EXACT.values()), "one row per distinct number"
    assert sorted(r["value"] for r in rows) == stored
    texts = {r["text"] for r in rows}
    assert {EXACT["b"], EXACT["c"], EXACT["d"], EXACT["e"]} <= texts, texts
