"""What ingest does with one message (pipeline.ingest.route): forward or dead-letter, never raise; and
producer headers in the pipeline's namespace never pass for the pipeline's own."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import headers as h
from pipeline import ingest
from pipeline.events import parse_event
from pipeline.ingest import Origin, route
from pipeline.limits import record_bytes

ORIGIN = Origin("events.ingest", 3, 41)
GOOD = json.dumps({"timestamp": "2026-11-22T10:00:00Z", "source": "s", "type": "t", "payload": {"x": 1}}).encode()
# Every header name the pipeline writes or reads, from pipeline.headers.
PIPELINE_HEADERS = sorted(
    value
    for name, value in vars(h).items()
    if name.isupper() and isinstance(value, str) and value.startswith("pipeline.")
)


def routed(value: bytes | None, headers: Sequence[tuple[str, bytes | None]], **limits: int) -> ingest.Routed:
    return route(
        b"k",
        value,
        headers,
        ORIGIN,
        max_event_bytes=limits.get("max_event_bytes", 10_000),
        max_record_bytes=limits.get("max_record_bytes", 100_000),
    )


def test_every_pipeline_header_is_known() -> None:
    assert {h.ATTEMPT, h.DUE_MS, h.ORIGIN_TOPIC, h.EVENT_HASH, h.ERROR_REASON, h.FIRST_FAILED_AT} <= set(
        PIPELINE_HEADERS
    )
    assert all(h.is_reserved(name) for name in PIPELINE_HEADERS)


@pytest.mark.parametrize("name", [*PIPELINE_HEADERS, "Pipeline.Retry.Attempt", "PIPELINE.anything"])
def test_a_forged_pipeline_header_is_renamed_on_forwarded_and_dead_lettered_events(name: str) -> None:
    forged = [(name, b"forged"), ("trace-id", b"t-1"), ("idempotency-key", b"k-1")]
    for value in (GOOD, b"not json"):
        out = routed(value, forged)
        names = [k for k, _ in out.headers]
        assert (h.PRODUCER_PREFIX + name, b"forged") in out.headers
        assert name not in names or dict(out.headers)[name] != b"forged"
        assert ("trace-id", b"t-1") in out.headers and ("idempotency-key", b"k-1") in out.headers
        assert all(v != b"forged" for k, v in out.headers if h.is_reserved(k))


def test_forwarded_events_carry_the_pipelines_own_values() -> None:
    forged = [(h.EVENT_HASH, b"0" * 64), (h.ORIGIN_OFFSET, b"999"), (h.ATTEMPT, b"99"), (h.DUE_MS, b"9" * 15)]
    out = routed(GOOD, forged)
    assert out.rejection is None
    mine = {k: v for k, v in out.headers if h.is_reserved(k)}
    assert mine == {
        h.ORIGIN_TOPIC: b"events.ingest",
        h.ORIGIN_PARTITION: b"3",
        h.ORIGIN_OFFSET: b"41",
        h.EVENT_HASH: parse_event(GOOD, 10_000).event_hash.encode(),
    }
    assert out.key == mine[h.EVENT_HASH]


def test_the_idempotency_key_header_still_counts() -> None:
    a = routed(GOOD, [(h.IDEMPOTENCY_KEY, b"k-1")])
    b = routed(GOOD.replace(b'"x": 1', b'"x": 2'), [(h.IDEMPOTENCY_KEY, b"k-1")])
    assert a.key == b.key


def test_an_event_whose_record_would_be_too_large_is_dead_lettered_as_too_large() -> None:
    big_headers = [("trace", b"x" * 5000)]
    limit = record_bytes(b"0" * 64, parse_event(GOOD, 10_000).body, big_headers)  # without the pipeline's headers
    out = routed(GOOD, big_headers, max_record_bytes=limit)
    assert out.rejection is not None and out.rejection.reason == "too_large"
    assert out.value == GOOD and out.key == b"k"
    assert dict(out.headers)[h.ERROR_REASON] == b"too_large"


def test_any_error_dead_letters_the_message_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(ingest, "parse_event", broken)
    out = routed(GOOD, [("trace-id", b"t")])
    assert out.rejection is not None and out.rejection.reason == "unprocessable"
    headers = dict(out.headers)
    assert headers[h.ERROR_REASON] == b"unprocessable"
    assert b"OverflowError" in headers[h.ERROR_MESSAGE]
    assert headers[h.ORIGIN_OFFSET] == b"41" and out.value == GOOD


_header_names = st.text(min_size=1, max_size=40)
_headers = st.lists(st.tuples(_header_names, st.binary(max_size=200)), max_size=8)


@given(_headers, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))
def test_forwarded_headers_are_what_merging_the_pipelines_own_gives(
    headers: list[tuple[str, bytes]], partition: int, offset: int
) -> None:
    origin = Origin("ingest.topic", partition, offset)
    value = json.dumps({"source": "s", "type": "t", "timestamp": "2026-12-01T00:00:00Z", "payload": {"v": 1}}).encode()
    routed = route(None, value, headers, origin, max_event_bytes=1 << 20, max_record_bytes=2 << 20)
    assert routed.rejection is None and routed.accepted is not None
    merged = h.merge(h.from_producer(headers), {**origin.headers(), h.EVENT_HASH: routed.accepted.event_hash})
    assert routed.headers == merged
