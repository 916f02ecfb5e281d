"""The DLQ tools' pure parts: time parsing, filters, the JSON lines codec, replay and parking headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pipeline import headers as h
from pipeline.dlq import codec
from pipeline.dlq.errors import BadTime
from pipeline.dlq.filters import Filter
from pipeline.dlq.records import DeadLetter
from pipeline.dlq.replay import parked_headers, replay_headers
from pipeline.dlq.timeparse import parse_time, to_ms

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def letter(**changes: object) -> DeadLetter:
    base: dict[str, object] = {
        "topic": "sink.tsdb.dlq",
        "partition": 0,
        "offset": 7,
        "timestamp_ms": to_ms(NOW),
        "key": b"abc",
        "value": b'{"n": 1}',
        "headers": ((h.ERROR_CLASS, b"FatalSinkError"), (h.ERROR_REASON, b"fatal")),
    }
    base.update(changes)
    return DeadLetter(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("15min", NOW - timedelta(minutes=15)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T12:30:00+02:00", datetime(2026, 11, 22, 10, 30, tzinfo=UTC)),
        ("2026-11-22 10:00:00.250Z", datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_times_parse_as_rfc3339_or_relative(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "2026-11-22T10:00:00", "2026-13-01T00:00:00Z", ""])
def test_bad_times_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(BadTime) as err:
        parse_time(text, NOW)
    assert "RFC 3339" in str(err.value) or "UTC offset" in str(err.value)


def test_filters_select_by_class_reason_time_and_key() -> None:
    record = letter()
    assert Filter().matches(record) and Filter().empty
    assert Filter(error_class="FatalSinkError", reason="fatal", key="abc").matches(record)
    assert not Filter(error_class="SinkTimeout").matches(record)
    assert not Filter(reason="retries_exhausted").matches(record)
    assert not Filter(key="abd").matches(record)
    assert not Filter(key="abc").matches(letter(key=None))
    assert Filter(since=NOW).matches(record)  # since is inclusive
    assert not Filter(until=NOW).matches(record)  # until is exclusive
    assert Filter(until=NOW + timedelta(milliseconds=1)).matches(record)
    assert not Filter(since=NOW + timedelta(milliseconds=1)).matches(record)
    assert "error_class=X" in Filter(error_class="X").describe()


def test_the_codec_is_lossless_for_text_bytes_nulls_and_repeated_headers() -> None:
    record = letter(
        key=b"\xff\x00key",
        value=bytes(range(256)),
        headers=(("a", b"1"), ("a", b"2"), ("bin", b"\x80\x81"), ("none", None), ("empty", b""), ("ü", "é".encode())),
    )
    line = codec.encode(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["key_encoding"] == "base64" and body["value_encoding"] == "base64"
    assert [x["name"] for x in body["headers"]] == ["a", "a", "bin", "none", "empty", "ü"]
    assert body["headers"][0] == {"name": "a", "value": "1", "encoding": "utf-8"}
    assert body["headers"][2]["encoding"] == "base64"
    assert codec.decode(line) == record
    text = letter(key=None, value=None, headers=())
    assert codec.decode(codec.encode(text)) == text
    assert json.loads(codec.encode(letter()))["value"] == '{"n": 1}'


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[]",
        '{"timestamp": "now"}',
        '{"timestamp": 1, "headers": {}}',
        '{"timestamp": 1, "headers": [{"value": "x"}]}',
        '{"timestamp": 1, "value": "!!", "value_encoding": "base64"}',
        '{"timestamp": 1, "value": "x", "value_encoding": "rot13"}',
    ],
)
def test_the_codec_refuses_malformed_lines(line: str) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(line)


def test_a_replayed_event_starts_a_new_retry_budget_and_counts_its_replays() -> None:
    failed = letter(
        headers=(
            (h.EVENT_HASH, b"abc"),
            ("trace", b"t1"),
            (h.ATTEMPT, b"5"),
            (h.DUE_MS, b"1"),
            (h.ERROR_CLASS, b"FatalSinkError"),
            (h.FAILED_OFFSET, b"3"),
            (h.REPLAY_COUNT, b"2"),
        )
    )
    assert failed.replay_count == 2
    out = replay_headers(failed, ingest=False)
    assert out == [(h.EVENT_HASH, b"abc"), ("trace", b"t1"), (h.REPLAY_COUNT, b"3")]
    assert letter(headers=()).replay_count == 0
    assert letter(headers=((h.REPLAY_COUNT, b"x"),)).replay_count == 0


def test_an_ingest_dlq_event_is_replayed_with_its_producer_headers_only() -> None:
    # The ingest agent renamed the producer's pipeline.* headers and will rename pipeline.replay.count too.
    failed = letter(
        headers=(
            ("producer.pipeline.x", b"1"),
            ("trace", b"t1"),
            (h.ORIGIN_TOPIC, b"events.ingest"),
            (h.ERROR_REASON, b"schema"),
            (h.PRODUCER_PREFIX + h.REPLAY_COUNT, b"1"),
        )
    )
    assert failed.replay_count == 1
    assert replay_headers(failed, ingest=True) == [
        ("producer.pipeline.x", b"1"),
        ("trace", b"t1"),
        (h.REPLAY_COUNT, b"2"),
    ]


def test_a_parked_event_keeps_its_headers_and_says_why() -> None:
    record = letter(headers=((h.REPLAY_COUNT, b"3"), (h.ERROR_CLASS, b"X")))
    out = dict(parked_headers(record, "replayed 3 times already"))
    assert out[h.REPLAY_COUNT] == b"3" and out[h.ERROR_CLASS] == b"X"
    assert out[h.PARKED_REASON] == b"replayed 3 times already" and h.PARKED_AT in out
