from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import events
from pipeline.events import REASONS, Rejection, key_hash, parse_event

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


# --------------------------------------------------------------------------------------------------
# Schema-shaped events with extreme but syntactically valid values: accepted, or a Rejection.

edge_years = st.one_of(st.sampled_from([1, 2, 999, 1000, 1969, 1970, 2038, 9998, 9999]), st.integers(1, 9999))
offsets = st.one_of(
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-23:59", "+14:00", "-12:00", "+24:00", "+99:99"]),
    st.builds(lambda s, h, m: f"{s}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)),
    st.just(""),
)
timestamps = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, frac, off: json.dumps(
            f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
        ),
        edge_years,
        st.sampled_from([1, 2, 12]),
        st.sampled_from([1, 1, 28, 29, 30, 31]),
        st.sampled_from([0, 23]),
        st.sampled_from([0, 59]),
        st.sampled_from([0, 59, 60]),
        st.sampled_from(["", ".0", ".999999", ".9999999999", ",5"]),
        offsets,
    ),
    st.integers(-(10**30), 10**30).map(str),  # unix seconds, any size
    st.sampled_from(["1e308", "-1e308", "1.5", "0", "-0.0"]),
)
number_literals = st.one_of(
    st.integers(-(2**200), 2**200).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.builds(
        lambda m, f, e: f"{m}.{f}e{e}",
        st.integers(-(10**40), 10**40),
        st.text("0123456789", min_size=1, max_size=40),
        st.integers(-(10**12), 10**12),
    ),
    st.sampled_from(["1e400", "-1e-400", "5e-324", "1.7976931348623157e308", "0e0", "-0", "1E+999999999"]),
)
every_plane = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
long_strings = st.one_of(every_plane, st.integers(1000, 20_000).map(lambda n: "\U0010fffd" * n))
json_texts = st.recursive(
    st.one_of(st.sampled_from(["null", "true", "false"]), number_literals, long_strings.map(json.dumps)),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(every_plane.map(json.dumps), children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=20,
)
deep = st.integers(200, 1200).map(lambda depth: "[" * depth + "1" + "]" * depth)
labels = st.dictionaries(every_plane, every_plane, max_size=300).map(json.dumps)
names = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), min_size=1, max_size=256)


@st.composite
def extreme_events(draw: st.DrawFn) -> bytes:
    fields = {
        "timestamp": draw(timestamps),
        "source": json.dumps(draw(st.one_of(names, names, long_strings))),
        "type": json.dumps(draw(names)),
        "labels": draw(labels),
        "payload": draw(st.one_of(json_texts, deep)),
    }
    if draw(st.booleans()):
        fields["id"] = json.dumps(draw(names))
    if draw(st.booleans()):
        fields["idempotency_key"] = json.dumps(draw(st.one_of(names, long_strings)))
    keys = draw(st.permutations(list(fields)))
    return ("{" + ",".join(f'"{k}":{fields[k]}' for k in keys) + "}").encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extreme_events(), st.sampled_from([64, 4096, 1_048_576]))
def test_extreme_events_are_accepted_or_rejected_never_anything_else(raw: bytes, limit: int) -> None:
    try:
        accepted = parse_event(raw, limit)
    except Rejection as rejection:
        assert rejection.reason in REASONS and rejection.reason != "unprocessable", rejection.message
        return
    assert len(accepted.body) <= limit
    again = parse_event(accepted.body, limit)  # the canonical form is stable
    assert again.body == accepted.body
    if accepted.idempotency_key is None:
        assert again.event_hash == accepted.event_hash


@pytest.mark.parametrize(
    "timestamp",
    [
        "9999-12-31T23:59:59-00:01",
        "9999-12-31T20:00:00-05:00",
        "0001-01-01T00:00:00+00:01",
        "0001-01-01T01:00:00+14:00",
    ],
)
def test_a_timestamp_that_overflows_in_utc_is_a_schema_rejection(timestamp: str) -> None:
    with pytest.raises(Rejection) as err:
        parse_event(json.dumps({**BASE, "timestamp": timestamp}).encode(), 10_000)
    assert err.value.reason == "schema" and "timestamp" in err.value.message


def test_timestamps_at_the_calendars_edges_keep_four_digit_years() -> None:
    first = parse_event(json.dumps({**BASE, "timestamp": "0001-01-01T00:00:00Z"}).encode(), 10_000)
    last = parse_event(json.dumps({**BASE, "timestamp": "9999-12-31T23:59:59.999999-00:00"}).encode(), 10_000)
    assert b'"timestamp":"0001-01-01T00:00:00.000000Z"' in first.body
    assert b'"timestamp":"9999-12-31T23:59:59.999999Z"' in last.body


def test_the_canonical_body_is_held_to_the_limit_too() -> None:
    raw = json.dumps({**BASE, "payload": [1e20] * 20}).encode()  # each 1e+20 becomes 21 digits
    assert parse_event(raw, 10_000).body.count(b"100000000000000000000") == 20
    with pytest.raises(Rejection) as err:
        parse_event(raw, len(raw) + 10)
    assert err.value.reason == "too_large" and "canonical" in err.value.message


def test_an_unexpected_error_is_a_rejection_with_its_own_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import events

    def broken(_: object) -> bytes:
        raise KeyError("a bug")

    monkeypatch.setattr(events, "_dump", broken)
    with pytest.raises(Rejection) as err:
        parse_event(json.dumps(BASE).encode(), 10_000)
    assert err.value.reason == "unprocessable" and "KeyError" in err.value.message


# --------------------------------------------------------------------------------------------------
# The plain path (orjson, no pydantic) gives what the full path gives, or leaves the message to it.


def _full(raw: bytes, header_key: str | None) -> tuple[bytes, str | None] | Rejection:
    try:
        return events._accept(raw, header_key)
    except Rejection as rejection:
        return rejection


def _same_as_full(raw: bytes, header_key: str | None = None) -> None:
    plain = events._accept_plain(raw, header_key)
    if plain is not None:
        assert plain == _full(raw, header_key), raw[:200]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extreme_events(), st.one_of(st.none(), names))
def test_the_plain_path_agrees_with_the_full_path_on_extreme_events(raw: bytes, header_key: str | None) -> None:
    _same_as_full(raw, header_key)


@settings(max_examples=300, deadline=None)
@given(json_values, timestamps)
def test_the_plain_path_agrees_with_the_full_path_on_ordinary_events(payload: object, timestamp: str) -> None:
    raw = json.dumps({**BASE, "timestamp": timestamp, "payload": payload}).encode()
    _same_as_full(raw)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_is_the_canonical_spelling_of_repr(value: float) -> None:
    assert events.float_text(value) == events.canonical_number(repr(value))


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers())
def test_canonical_number_leaves_a_canonical_spelling_as_it_is(value: float | int) -> None:
    # The plain path takes a long number that spells a parsed number's canonical text without respelling it.
    text = events.canonical_number(repr(value))
    assert events.canonical_number(text) == text


def test_ordinary_events_take_the_plain_path() -> None:
    for raw in (
        json.dumps(BASE).encode(),
        json.dumps({**BASE, "payload": {"t": 40.5, "rpm": 905, "ok": True, "v": [0.25, -3.0, 1e-05, 1.5e20]}}).encode(),
        json.dumps({**BASE, "timestamp": "2026-11-22T12:00:00.123+05:30", "id": "a", "idempotency_key": "k"}).encode(),
    ):
        assert events._accept_plain(raw, None) is not None, raw


@pytest.mark.parametrize(
    "number",
    ["0.10000000000000000001", "123456789012345678901", "1234567.1234567891", "1e-400", "1e400", "5e-324", "2.5E+100"],
)
def test_numbers_a_double_may_not_hold_exactly_take_the_full_path(number: str) -> None:
    raw = ('{"timestamp":"2026-11-22T10:00:00Z","source":"s","type":"t","payload":[' + number + "]}").encode()
    assert events._accept_plain(raw, None) is None


@pytest.mark.parametrize(
    "numbers",
    [
        "1764625749.1234567",  # an epoch time in seconds as serialisers write it: 17 digits
        "59.91273456789012, 10.752245678901234",
        "1764625749123456789",  # nanoseconds: an integer of 19 digits, within 64 bits
        "0.30000000000000004",  # 0.1 + 0.2 as written by any shortest-repr serialiser
    ],
)
def test_long_numbers_serialisers_write_take_the_plain_path(numbers: str) -> None:
    raw = ('{"timestamp":"2026-11-22T10:00:00Z","source":"s","type":"t","payload":[' + numbers + "]}").encode()
    plain = events._accept_plain(raw, None)
    assert plain is not None and plain == events._accept(raw, None)


@pytest.mark.parametrize(
    "numbers",
    [
        "0.1, 0.10000000000000001",  # the second is 0.1 as a double but not as a number
        "12345678901234567, 12345678901234567.0",  # the float is ...568 as a double
        "18446744073709551616, 1.8446744073709552e19",  # 2**64: a float to orjson
    ],
)
def test_long_numbers_a_double_changes_take_the_full_path(numbers: str) -> None:
    raw = ('{"timestamp":"2026-11-22T10:00:00Z","source":"s","type":"t","payload":[' + numbers + "]}").encode()
    assert events._accept_plain(raw, None) is None


@settings(max_examples=500)
@given(st.text(alphabet='0123456789.-+eE a"', max_size=120).map(str.encode))
def test_long_numbers_are_found_as_the_regular_expression_finds_them(raw: bytes) -> None:
    _, shapes = events._number_shapes(raw)
    found = list(events._long_numbers(raw, shapes)) if shapes is not None else []
    assert found == [match.group() for match in events._LONG_NUMBER.finditer(raw)]


@pytest.mark.parametrize(
    "raw",
    [
        b"-12345678901234567e-5 x 1234567890123456.7E+3-0000000000000000",
        b"--1234567890123456 12345678901234567890123456789012.5e10",
    ],
)
def test_long_numbers_signs_and_exponents_belong_to_their_run(raw: bytes) -> None:
    _, shapes = events._number_shapes(raw)
    assert shapes is not None
    assert list(events._long_numbers(raw, shapes)) == [m.group() for m in events._LONG_NUMBER.finditer(raw)]


def test_unix_time_is_read_as_utc_seconds_or_milliseconds_as_the_readme_says() -> None:
    for stamp in (1700000000, "1700000000", 1700000000000, "2023-11-14T23:13:20+01:00"):
        raw = json.dumps({"timestamp": stamp, "source": "s", "type": "t"}).encode()
        body = json.loads(parse_event(raw, 1 << 20).body)
        assert body["timestamp"] == "2023-11-14T22:13:20.000000Z", stamp


def test_a_key_given_twice_counts_once_with_its_last_value_on_both_paths() -> None:
    head = b'{"timestamp":"2026-11-22T10:00:00Z","source":"v","source":"w","type":"t","payload":{"x":1,"x":'
    plain = json.loads(parse_event(head + b"2}}", 1 << 20).body)
    full = json.loads(parse_event(head + b'2,"big":1e400}}', 1 << 20).body)  # 1e400: the exact-number path
    assert plain["source"] == full["source"] == "w"
    assert plain["payload"] == {"x": 2} and full["payload"]["x"] == 2


@pytest.mark.parametrize(
    ("raw", "reason", "problem"),
    [
        (b'\xef\xbb\xbf{"timestamp":"2026-11-22T10:00:00Z","source":"s","type":"t"}', "invalid_json", "(BOM)"),
        (b'{"timestamp":"2026-11-28T23:59:60Z","source":"s","type":"t"}', "schema", "leap second (:60)"),
        (b'{"timestamp":"2026-11-28 23:59:60.5+01:00","source":"s","type":"t"}', "schema", "leap second (:60)"),
    ],
)
def test_a_bom_and_a_leap_second_are_named_in_the_rejection(raw: bytes, reason: str, problem: str) -> None:
    with pytest.raises(Rejection) as caught:
        parse_event(raw, 1 << 20)
    assert caught.value.reason == reason and problem in caught.value.message
