"""The Loki sink's push building (labels, cardinality cap, splitting, encodings) and its settings; the
bodies are decoded by tests/loki_server.py, which reads the protobuf wire format independently."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cramjam
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import ConfigError, display_value, iter_effective, load_settings
from pipeline.events import canonical_json, format_timestamp
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, SinkRecord, SinkTimeout, SinkUnavailable
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.loki.push import (
    Entry,
    InvalidEntry,
    Stream,
    StreamLabeler,
    build_pushes,
    encode_json,
    encode_protobuf,
    encode_push,
    format_labels,
    group_streams,
    parse_record,
    proto,
    sanitize_label_name,
    stream_bucket,
    timestamp_ns,
)
from pipeline.sinks.loki.sink import LokiSink
from tests.loki_server import BadRequest, Forced, LokiServer, decode_body, loki_server, parse_labels

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def body(n: int, *, source: str | None = None, labels: dict[str, str] | None = None, pad: int = 0) -> bytes:
    event: dict[str, Any] = {
        "timestamp": format_timestamp(NOW + timedelta(milliseconds=n)),
        "source": source or f"vessel-{n % 3}",
        "type": "engine.telemetry",
        "labels": labels if labels is not None else {"deck": str(n % 2)},
        "payload": {"n": n, "pad": "x" * pad},
    }
    return canonical_json(event)


def record(n: int, **kw: Any) -> SinkRecord:
    return SinkRecord(event_hash=f"h{n}", body=body(n, **kw))


def streams_of(bodies: list[bytes], labeler: StreamLabeler | None = None) -> list[Stream]:
    labeler = labeler or StreamLabeler()
    items = []
    for i, raw in enumerate(bodies):
        entry, event = parse_record(raw, f"h{i}", 1 << 20)
        labels, pairs = labeler.labels_for(event)
        items.append((labels, pairs, entry))
    return group_streams(items)


def flat(streams: list[Stream]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for s in streams:
        out.setdefault(s.labels, []).extend((e.ts_ns, e.line) for e in s.entries)
    return out


# --------------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("name", "expected"),
    [("deck", "deck"), ("ship.deck", "ship_deck"), ("2nd", "_2nd"), ("a-b c", "a_b_c"), ("é", "_"), ("_x9", "_x9")],
)
def test_label_names_are_sanitised(name: str, expected: str) -> None:
    assert sanitize_label_name(name) == expected


def test_label_values_are_escaped_and_parse_back_as_loki_reads_them() -> None:
    pairs = {"source": 'a"b\\c\nd\re\tf', "type": "plain", "deck": "ünï ✓"}
    text = format_labels(pairs)
    assert text == '{deck="ünï ✓", source="a\\"b\\\\c\\nd\\re\\tf", type="plain"}'
    assert parse_labels(text) == pairs


def test_labels_from_the_event_fields_and_the_allowlist() -> None:
    labeler = StreamLabeler(label_keys=("source", "type", "id"), event_label_allowlist=("deck", "ship.name", "gone"))
    event = {"source": "s", "type": "t", "labels": {"deck": "2", "ship.name": "Nau", "other": "x", "gone": ""}}
    key, pairs = labeler.labels_for(event)
    assert pairs == {"source": "s", "type": "t", "deck": "2", "ship_name": "Nau"}  # no id, empty value dropped
    assert key == '{deck="2", ship_name="Nau", source="s", type="t"}'


def test_long_label_values_are_cut_to_2048_bytes_on_a_character_boundary() -> None:
    _, pairs = StreamLabeler().labels_for({"source": "é" * 1500, "type": "t"})
    assert len(pairs["source"].encode()) == 2048 and pairs["source"] == "é" * 1024


def test_without_max_streams_each_label_set_is_its_own_stream() -> None:
    labeler = StreamLabeler(label_keys=("source", "type"))
    for n in range(50):
        key, pairs = labeler.labels_for({"source": f"s{n}", "type": "t"})
        assert (key, pairs) == (f'{{source="s{n}", type="t"}}', {"source": f"s{n}", "type": "t"})
    assert labeler.bucketed_events == 0


def test_max_streams_puts_each_label_set_in_its_hash_bucket() -> None:
    labeler = StreamLabeler(label_keys=("source", "type"), max_streams=7)
    own = '{source="a", type="1"}'
    bucket = int.from_bytes(hashlib.sha256(own.encode()).digest()[:8], "big") % 7
    assert stream_bucket(own, 7) == bucket
    assert labeler.labels_for({"source": "a", "type": "1"}) == (
        f'{{stream_bucket="{bucket}"}}',
        {"stream_bucket": str(bucket)},
    )
    streams = {labeler.labels_for({"source": f"s{n}", "type": str(n % 3)})[0] for n in range(500)}
    assert len(streams) == 7 and labeler.bucketed_events == 501


label_values = st.text(alphabet='abcdef"\n é✓', min_size=0, max_size=4)
events_strategy = st.lists(
    st.fixed_dictionaries(
        {"source": label_values, "type": label_values, "labels": st.fixed_dictionaries({"deck": label_values})}
    ),
    min_size=1,
    max_size=40,
)


@given(
    events=events_strategy,
    max_streams=st.sampled_from([0, 1, 3, 1000]),
    order=st.randoms(use_true_random=False),
    workers=st.integers(min_value=1, max_value=4),
)
def test_an_events_stream_does_not_depend_on_the_events_a_worker_saw_before(
    events: list[dict[str, Any]], max_streams: int, order: Any, workers: int
) -> None:
    """Any order and any partitioning of the same events over workers (and restarts: a new labeler)
    gives every event the same stream; with max_streams = N there are at most N streams."""

    def labeler() -> StreamLabeler:
        return StreamLabeler(label_keys=("source", "type"), event_label_allowlist=("deck",), max_streams=max_streams)

    reference = labeler()
    expected = [reference.labels_for(event) for event in events]
    shuffled = list(enumerate(events))
    order.shuffle(shuffled)
    labelers = [labeler() for _ in range(workers)]
    for i, event in shuffled:
        assert labelers[order.randrange(workers)].labels_for(event) == expected[i]
    if max_streams:
        assert len({key for key, _ in expected}) <= max_streams


# --------------------------------------------------------------------------------------------------
# Entries, splitting, encodings


def test_timestamp_in_nanoseconds_is_exact() -> None:
    assert timestamp_ns("1970-01-01T00:00:01.000001Z") == 1_000_001_000
    assert timestamp_ns("2026-11-22T10:00:00.123456Z") == 1_795_341_600_123_456_000


def test_an_integer_beyond_64_bits_is_stored_byte_for_byte_in_the_line() -> None:
    raw = b'{"labels":{},"payload":{"n":123456789012345678901234567890},"source":"s",'
    raw += b'"timestamp":"2026-11-22T10:00:00.000000Z","type":"t"}'
    entry, event = parse_record(raw, "h", 10_000)
    assert entry.line == raw.decode()
    assert event["timestamp"] == "2026-11-22T10:00:00.000000Z"  # the line is the body; fields only label it


def test_entries_within_a_stream_are_sorted_by_timestamp() -> None:
    labeler = StreamLabeler(event_label_allowlist=("deck",))
    streams = streams_of([body(n, source="s") for n in (5, 1, 3, 0, 2)], labeler)
    assert [len(s.entries) for s in streams] == [3, 2]  # deck 1 (5, 1, 3), deck 0 (0, 2), first seen first
    for stream in streams:
        stamps = [e.ts_ns for e in stream.entries]
        assert stamps == sorted(stamps)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
@pytest.mark.parametrize("limit", [1024, 3000, 20_000, 1 << 20])
def test_pushes_are_split_to_respect_max_push_bytes(encoding: Any, limit: int) -> None:
    streams = streams_of([body(n, pad=n * 7 % 300) for n in range(200)])
    pushes = build_pushes(streams, encoding, limit)
    for push in pushes:
        raw = encode_protobuf(push.streams) if encoding == "protobuf" else encode_json(push.streams)
        assert len(raw) == push.raw_size  # the sizes are exact, not estimates
        assert push.raw_size <= limit
    assert flat([s for p in pushes for s in p.streams]) == flat(streams)  # nothing lost, order kept
    if limit < 20_000:
        assert len(pushes) > 1


def test_an_entry_bigger_than_the_limit_goes_alone() -> None:
    streams = streams_of([body(0, pad=3000), body(1), body(2)])
    pushes = build_pushes(streams, "protobuf", 1024)
    assert [p.entries for p in pushes] == [1, 2]
    assert pushes[0].raw_size > 1024 and pushes[1].raw_size <= 1024


def test_protobuf_snappy_round_trip_through_the_test_servers_decoder() -> None:
    streams = streams_of([body(n, labels={"deck": "1"}) for n in range(50)])
    encoded = encode_push(build_pushes(streams, "protobuf", 1 << 20)[0], "protobuf")
    assert encoded.headers == {"content-type": "application/x-protobuf"}
    assert bytes(cramjam.snappy.decompress_raw(encoded.content)) == encode_protobuf(streams)  # snappy BLOCK
    decoded = decode_body(encoded.content, "application/x-protobuf", None)
    assert {s.labels: [(e.ts_ns, e.line) for e in s.entries] for s in decoded} == flat(streams)
    # The runtime-built classes carry Loki's names: the wire bytes parse back into logproto.PushRequest.
    request: Any = proto().push_request.FromString(encode_protobuf(streams))
    assert request.DESCRIPTOR.full_name == "logproto.PushRequest"
    assert request.streams[0].entries[0].timestamp.ToNanoseconds() == streams[0].entries[0].ts_ns
    fields = {f.name: f.number for f in proto().entry.DESCRIPTOR.fields}
    assert fields == {"timestamp": 1, "line": 2, "structuredMetadata": 3}
    assert {f.name: f.number for f in proto().stream.DESCRIPTOR.fields} == {"labels": 1, "entries": 2, "hash": 3}


def test_json_gzip_round_trip() -> None:
    streams = streams_of([body(n) for n in range(30)], StreamLabeler(event_label_allowlist=("deck",)))
    encoded = encode_push(build_pushes(streams, "json", 1 << 20)[0], "json")
    assert encoded.headers == {"content-type": "application/json", "content-encoding": "gzip"}
    doc = json.loads(gzip.decompress(encoded.content))
    first = doc["streams"][0]
    assert set(first["stream"]) == {"source", "type", "deck"}
    assert all(isinstance(v[0], str) and v[0].isdigit() for v in first["values"])
    decoded = decode_body(encoded.content, "application/json", "gzip")
    assert {s.labels: [(e.ts_ns, e.line) for e in s.entries] for s in decoded} == flat(streams)


def test_the_test_server_rejects_framed_snappy_and_garbage_like_loki() -> None:
    raw = encode_protobuf(streams_of([body(0)]))
    with pytest.raises(BadRequest, match="snappy: corrupt input"):
        decode_body(bytes(cramjam.snappy.compress(raw)), "application/x-protobuf", None)  # framed format
    with pytest.raises(BadRequest):
        decode_body(b"\x00\x01garbage", "application/x-protobuf", None)
    with pytest.raises(BadRequest) as info:
        decode_body(b"{}", "application/json", "br")
    assert info.value.status == 415


def test_a_line_longer_than_max_line_bytes_is_invalid() -> None:
    raw = body(0, pad=500)
    with pytest.raises(InvalidEntry, match="max_line_bytes 256"):
        parse_record(raw, "h0", 256)
    entry, _ = parse_record(raw, "h0", len(raw))
    assert entry == Entry(ts_ns=entry.ts_ns, line=raw.decode(), event_hash="h0")


# --------------------------------------------------------------------------------------------------
# The sink against the test server (no broker)


@pytest.fixture
def server() -> Iterator[LokiServer]:
    with loki_server() as s:
        yield s


def settings(url: str, **kw: Any) -> LokiSinkSettings:
    return LokiSinkSettings(name="loki", enabled=True, url=url, **kw)


async def test_line_too_long_is_fatal_and_nothing_is_sent(server: LokiServer) -> None:
    sink = LokiSink(settings(server.url, max_line_bytes=300))
    await sink.open()
    try:
        with pytest.raises(FatalSinkError, match="event h1: line of"):
            await sink.write([record(0), record(1, pad=400), record(2)])
        assert server.pushes() == []
        assert await sink.write([record(0), record(2)]) == 2
        assert server.count() == 2
    finally:
        await sink.close()


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_small_max_push_bytes_splits_a_batch_into_several_pushes(server: LokiServer, encoding: Any) -> None:
    sink = LokiSink(settings(server.url, encoding=encoding, max_push_bytes=4096, max_line_bytes=2048))
    await sink.open()
    try:
        batch = [record(n, pad=200) for n in range(100)]
        await sink.write(batch)
        assert len(server.pushes()) > 5 and all(p.status == 204 for p in server.pushes())
        assert sorted(r.body.decode() for r in batch) == sorted(server.lines())
    finally:
        await sink.close()


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "2"}, RetryableSinkError, 2.0),
        (500, {}, RetryableSinkError, None),
        (503, {"Retry-After": "1.5"}, RetryableSinkError, 1.5),
        (400, {}, FatalSinkError, None),
        (401, {}, FatalSinkError, None),
        (404, {}, FatalSinkError, None),
        (413, {}, FatalSinkError, None),
    ],
)
async def test_status_classification(
    server: LokiServer, status: int, headers: dict[str, str], error: type[Exception], retry_after: float | None
) -> None:
    server.script(Forced(status, headers, f"status {status} from loki"))
    sink = LokiSink(settings(server.url))
    await sink.open()
    try:
        with pytest.raises(error, match=f"loki {status}: status {status} from loki") as info:
            await sink.write([record(0)])
        assert type(info.value) is error
        assert getattr(info.value, "retry_after", None) == retry_after
        await sink.write([record(0)])  # the script is spent: delivered
        assert server.count() == 1
    finally:
        await sink.close()


async def test_timeouts_and_connection_errors(server: LokiServer) -> None:
    sink = LokiSink(settings(server.url, retry={"timeout_ms": 300}))
    await sink.open()
    try:
        server.script(Forced(204, delay=1.0))
        with pytest.raises(SinkTimeout):
            await sink.write([record(0)])
    finally:
        await sink.close()
    with loki_server() as gone:
        url = gone.url
    dead = LokiSink(settings(url))
    with pytest.raises(SinkUnavailable):
        await dead.open()  # /ready unreachable: the runner retries the open
    dead._client = httpx.AsyncClient()
    with pytest.raises(SinkUnavailable, match="loki push failed: ConnectError"):
        await dead.write([record(0)])
    await dead.close()


async def test_open_does_not_fail_on_a_404_ready_and_sends_tenant_and_auth(server: LokiServer) -> None:
    sink = LokiSink(settings(server.url + "/prefix", tenant_id="t1", username="u", password="p"))
    await sink.open()  # /prefix/ready is a 404 here
    await sink.close()
    assert [(r.path, r.status) for r in server.requests] == [("/prefix/ready", 404)]
    sink = LokiSink(settings(server.url, tenant_id="t1", username="u", password="p"))
    await sink.open()
    try:
        await sink.write([record(0)])
    finally:
        await sink.close()
    push = server.pushes()[0]
    assert (push.tenant, push.authorization) == ("t1", "Basic dTpw")
    assert server.tenants() == {"t1"}


async def test_health_asks_lokis_ready_endpoint() -> None:
    with loki_server() as server:
        sink = LokiSink(settings(server.url))
        await sink.open()
        try:
            assert (await sink.health())["ok"] is True
            assert server.requests[-1].path == "/ready"
            server.ready = False
            report = await sink.health()
            assert report["ok"] is False and "not ready" in report["error"]
        finally:
            await sink.close()
    assert (await sink.health())["ok"] is False


# --------------------------------------------------------------------------------------------------
# The test server follows Loki's rules for duplicates, order and partial accepts


S = '{source="s"}'
T0 = int(NOW.timestamp()) * 1_000_000_000
SECOND = 1_000_000_000


def push(server: LokiServer, streams: dict[str, list[tuple[int, str]]]) -> httpx.Response:
    """A JSON push with entries exactly in the given order (the sink would sort them)."""
    doc = {
        "streams": [
            {"stream": parse_labels(labels), "values": [[str(ts), line] for ts, line in entries]}
            for labels, entries in streams.items()
        ]
    }
    return httpx.post(server.url + "/loki/api/v1/push", json=doc)


def test_exact_duplicates_are_dropped_and_a_same_timestamp_other_line_is_kept(server: LokiServer) -> None:
    first = [(T0 + n, f"line {n}") for n in range(5)]
    assert push(server, {S: first}).status_code == 204
    assert push(server, {S: first[::-1]}).status_code == 204  # re-sent, in another order
    assert push(server, {S: [(T0, "line 0 again"), (T0 + 1, "line 1")]}).status_code == 204
    assert server.streams()[S] == [*first, (T0, "line 0 again")]
    assert [(p.stored, p.duplicates) for p in server.pushes()] == [(5, 0), (0, 5), (1, 1)]
    # Another stream holds its own entries: the same timestamp and line there is no duplicate.
    assert push(server, {'{source="t"}': first[:1]}).status_code == 204
    assert server.count() == 7


def test_a_resent_entry_too_far_behind_is_rejected_although_stored() -> None:
    with loki_server(max_chunk_age=60) as server:  # unordered writes: the window is 30 s behind the newest
        assert push(server, {S: [(T0, "old"), (T0 + 10 * SECOND, "mid")]}).status_code == 204
        assert push(server, {S: [(T0 + 40 * SECOND, "new")]}).status_code == 204
        # "old" is stored, but now 40 s behind the newest: Loki rejects it before any duplicate check.
        response = push(server, {S: [(T0, "old"), (T0 + 10 * SECOND, "mid")]})
        assert response.status_code == 400
        assert "reason: 'entry too far behind" in response.text and "total ignored: 1 out of 2" in response.text
        # The stream's last entry is recognised before the order checks; "mid" is within the window.
        assert push(server, {S: [(T0 + 40 * SECOND, "new")]}).status_code == 204
        assert server.count() == 3 and server.pushes()[-2].duplicates == 1


def test_ordered_writes_drop_only_a_repeat_of_the_last_entry() -> None:
    with loki_server(unordered_writes=False) as server:
        entries = [(T0 + n, f"line {n}") for n in range(3)]
        assert push(server, {S: entries}).status_code == 204
        assert push(server, {S: entries[-1:]}).status_code == 204  # the last entry again: dropped
        response = push(server, {S: entries})  # the others are older than the newest: out of order
        assert response.status_code == 400
        assert response.text.count("reason: 'entry out of order'") == 2 and "total ignored: 2 out of 3" in response.text
        assert push(server, {S: [(T0 + 2, "same time, other line")]}).status_code == 204
        assert server.count() == 4


def test_a_push_with_rejected_entries_keeps_its_valid_ones(server: LokiServer) -> None:
    ancient = T0 - 8 * 86_400 * SECOND
    good = [(T0 + n, f"line {n}") for n in range(4)]
    response = push(server, {S: [*good[:2], (ancient, "too old"), *good[2:]], '{source="u"}': [(T0, "u")]})
    assert response.status_code == 400
    assert response.text.startswith(f"entry for stream '{S}' has timestamp too old")
    assert server.streams() == {S: good, '{source="u"}': [(T0, "u")]}
    # Bisection re-sends the good entries: exact duplicates, dropped; the bad one alone is rejected again.
    assert push(server, {S: good[:2]}).status_code == 204 and push(server, {S: good[2:]}).status_code == 204
    assert push(server, {S: [(ancient, "too old")]}).status_code == 400
    assert server.count() == 5 and sum(p.duplicates for p in server.pushes()) == 4


# --------------------------------------------------------------------------------------------------
# Settings


def test_env_names_and_comma_separated_lists() -> None:
    env = {
        "LOKI_ENABLED": "true",
        "LOKI_URL": "https://loki.example:3100/",
        "LOKI_TENANT_ID": "team-a",
        "LOKI_USERNAME": "u",
        "LOKI_PASSWORD": "hunter2",
        "LOKI_ENCODING": "json",
        "LOKI_LABEL_KEYS": "source, type,id",
        "LOKI_EVENT_LABEL_ALLOWLIST": "deck,ship.name",
        "LOKI_MAX_STREAMS": "50",
        "LOKI_MAX_PUSH_BYTES": "500000",
        "LOKI_MAX_LINE_BYTES": "100000",
        "LOKI_TLS_VERIFY": "false",
    }
    loki = load_settings(environ=env).sinks["loki"]
    assert isinstance(loki, LokiSinkSettings)
    assert loki.label_keys == ["source", "type", "id"] and loki.event_label_allowlist == ["deck", "ship.name"]
    assert (loki.tenant_id, loki.username, loki.encoding, loki.max_streams) == ("team-a", "u", "json", 50)
    assert (loki.max_push_bytes, loki.max_line_bytes, loki.tls_verify) == (500000, 100000, False)
    assert loki.push_url() == "https://loki.example:3100/loki/api/v1/push"
    shown = {path: display_value(path, value) for path, value in iter_effective(load_settings(environ=env))}
    assert shown["sinks.loki.password"] == "********" and "hunter2" not in str(shown)


def test_defaults() -> None:
    loki = LokiSinkSettings(name="loki")
    assert (loki.encoding, loki.label_keys, loki.event_label_allowlist) == ("protobuf", ["source", "type"], [])
    assert (loki.max_streams, loki.max_push_bytes, loki.max_line_bytes) == (0, 1_048_576, 262_144)


def test_push_url_accepts_the_full_push_path_and_strips_credentials() -> None:
    loki = LokiSinkSettings(name="loki", url="http://me:pw@loki:3100/loki/api/v1/push")
    assert loki.push_url() == "http://loki:3100/loki/api/v1/push"
    assert loki.base_url() == "http://loki:3100" and loki.url_credentials() == ("me", "pw")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"LOKI_LABEL_KEYS": "source,host"}, "unknown event field"),
        ({"LOKI_LABEL_KEYS": "id"}, "must contain source or type"),
        ({"LOKI_EVENT_LABEL_ALLOWLIST": "a.b,a-b"}, "both become the Loki label 'a_b'"),
        ({"LOKI_EVENT_LABEL_ALLOWLIST": "stream.bucket"}, "reserved"),
        ({"LOKI_EVENT_LABEL_ALLOWLIST": "__x"}, "reserved in Loki"),
        ({"LOKI_EVENT_LABEL_ALLOWLIST": ",".join(f"l{i}" for i in range(14))}, "at most 15"),
        ({"LOKI_MAX_LINE_BYTES": "2000000"}, "must not exceed max_push_bytes"),
        ({"LOKI_ENCODING": "xml"}, "sinks.loki.encoding"),
        ({"LOKI_URL": "loki:3100"}, "http:// or https://"),
    ],
)
def test_invalid_settings_name_the_problem(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"sinks\.loki") as info:
        load_settings(environ=env)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({}, "url is required"),
        ({"url": "http://l", "bearer_token": "t", "username": "u"}, "bearer_token and username"),
        ({"url": "http://l", "password": "p"}, "username is required"),
        ({"url": "http://l", "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ],
)
def test_runnable_checks(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        LokiSinkSettings(name="loki", enabled=True, **kw).require_runnable()
    assert "hunter2" not in str(info.value)
