from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import Rejection, key_hash, parse_event

BASE = {
    "timestamp": "2026-11-22T10:00:00Z",
    "source": "s",
    "type": "t",
    "labels": {"a": "1"},
    "payload": {"x": 1},
}


def test_hash_ignores_key_order_whitespace_and_time_zone_spelling() -> None:
    a = parse_event(json.dumps(BASE).encode(), 10_000)
    reordered = dict(reversed(list(BASE.items())))
    reordered["timestamp"] = "2026-11-22T12:00:00+02:00"
    b = parse_event(json.dumps(reordered, indent=3).encode(), 10_000)
    assert a.event_hash == b.event_hash and a.body == b.body
    assert b.body.startswith(
        b'{"labels":{"a":"1"},"payload":{"x":1},"source":"s","timestamp":"2026-11-22T10:00:00.000000Z"'
    )


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"x": 2}},
        {"source": "s2"},
        {"labels": {}},
        {"id": "e-1"},
        {"timestamp": "2026-11-22T10:00:01Z"},
    ],
)
def test_every_identity_field_counts(change: dict[str, object]) -> None:
    a = parse_event(json.dumps(BASE).encode(), 10_000)
    b = parse_event(json.dumps({**BASE, **change}).encode(), 10_000)
    assert a.event_hash != b.event_hash


def test_idempotency_key_from_field_or_header_replaces_the_content_hash() -> None:
    by_field = parse_event(json.dumps({**BASE, "idempotency_key": "k1"}).encode(), 10_000)
    by_header = parse_event(json.dumps({**BASE, "payload": {"other": True}}).encode(), 10_000, header_key="k1")
    assert by_field.event_hash == by_header.event_hash == key_hash("k1")
    assert b"idempotency_key" not in by_field.body


def test_big_integers_stay_exact() -> None:
    big = 2**80 + 1
    accepted = parse_event(json.dumps({**BASE, "payload": {"n": big}}).encode(), 10_000)
    assert str(big).encode() in accepted.body


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"{", "invalid_json"),
        (b"\xc3\x28", "invalid_utf8"),
        (b'"just a string"', "schema"),
        (json.dumps({**BASE, "source": 1}).encode(), "schema"),
        (json.dumps({**BASE, "payload": "x" * 200}).encode(), "too_large"),
    ],
)
def test_rejections_have_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(Rejection) as err:
        parse_event(raw, 200)
    assert err.value.reason == reason and err.value.message


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_rejection(raw: bytes) -> None:
    try:
        parse_event(raw, 250)
    except Rejection:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_any_json_payload_round_trips_to_the_same_hash(payload: object) -> None:
    try:
        first = parse_event(json.dumps({**BASE, "payload": payload}).encode(), 100_000)
    except Rejection as rejection:
        assert rejection.reason == "schema"  # lone surrogates have no UTF-8 form
        return
    again = parse_event(first.body, 100_000)
    assert again.event_hash == first.event_hash and again.body == first.body
