"""Building Loki push requests from sink records: stream labels, entries, splitting, encoding.

Stream labels of an event, exactly:
  1. Candidates, in this order: each event field named in `label_keys` (source, type, id; label name = the
     field name), then each key of the event's `labels` named in `event_label_allowlist` (label name = the
     key sanitised: every character outside [a-zA-Z0-9_] becomes "_", and a leading digit gets a "_" prefix;
     e.g. "ship.deck" -> "ship_deck", "2nd" -> "_2nd"). Keys not on the allowlist never become labels.
  2. A candidate whose value is missing or empty is left out (Loki treats an empty label as absent). A value
     longer than 2048 UTF-8 bytes (Loki's max_label_value_length) is cut to 2048 bytes on a character
     boundary.
  3. The set is written in Loki's form, names sorted: {name="value", name2="value2"}, with backslash,
     double quote, newline, carriage return and tab escaped as \\\\ \\" \\n \\r \\t.
  4. Cardinality bound (`StreamLabeler`): a pure function of the event and the settings, the same on every
     worker, after every restart and in every retry tier, whatever events came before. With
     `max_streams` = 0 (the default) the stream is the label set itself. With `max_streams` = N > 0 every
     event goes to one of N streams, {stream_bucket="<k>"} with k = the first 8 bytes of sha256(labels
     string of step 3), big-endian, modulo N: one stream for events of the same label set, at most N
     streams for the sink across all workers. The line always carries the whole event, labels included,
     so nothing is lost to the bucketing (query `{stream_bucket=~".+"} | json | source="..."`).
     Why no "first N label sets keep their own stream, the rest overflow": which sets came first depends
     on the order a worker saw events, so an event redelivered to another worker (or after a restart)
     would land in another stream, and Loki, which drops an entry only when the same stream holds the
     same timestamp and line, would store it twice. The trade-off: with N > 0 label values are not
     searchable as stream labels, and a stream mixes the timestamps of many label sets (Loki's
     out-of-order window applies to the bucket). Changing label_keys, event_label_allowlist or
     max_streams moves events to other streams: an event re-sent after such a change (from a retry
     tier, or redelivered after a crash) can be stored a second time, in its new stream.

Entry: timestamp = the event's timestamp in nanoseconds; line = the event's canonical JSON body, unchanged.
Within a stream, entries are sorted by timestamp (stable), as Loki rejects out-of-order entries per stream
unless unordered writes are on.

Encodings:
  protobuf  logproto.PushRequest (message classes built at runtime from a FileDescriptorProto with Loki's
            package, names and field numbers), serialised, then snappy BLOCK format; Content-Type
            application/x-protobuf, no Content-Encoding.
  json      {"streams":[{"stream":{labels},"values":[["<ns>","<line>"],...]}]} gzip-compressed;
            Content-Type application/json, Content-Encoding gzip.

Splitting: `build_pushes` cuts the streams into pushes whose encoded body BEFORE compression is at most
`max_push_bytes` (an entry too big to share a push goes alone; max_line_bytes <= max_push_bytes keeps that
rare). Sizes are computed exactly from the wire format, not estimated.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message

from pipeline.sinks.loki.config import BUCKET_LABEL

MAX_LABEL_VALUE_BYTES = 2048  # Loki's default limits_config.max_label_value_length
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_VALID_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TO_ESCAPE = re.compile(r'[\\"\n\r\t]')
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Encoding = Literal["protobuf", "json"]

# --------------------------------------------------------------------------------------------------
# Labels


def sanitize_label_name(name: str) -> str:
    """A valid Loki/Prometheus label name: invalid characters become "_", a leading digit gets a "_"."""
    cleaned = _INVALID_NAME_CHARS.sub("_", name) or "_"
    if cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def is_valid_label_name(name: str) -> bool:
    return bool(_VALID_NAME.match(name))


def escape_label_value(value: str) -> str:
    return _TO_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value)


def truncate_label_value(value: str, limit: int = MAX_LABEL_VALUE_BYTES) -> str:
    encoded = value.encode("utf-8")
    if len(encoded) <= limit:
        return value
    return encoded[:limit].decode("utf-8", "ignore")


def format_labels(labels: Mapping[str, str]) -> str:
    """Loki's labels string: {a="1", b="x\\"y"} with names sorted."""
    return "{" + ", ".join(f'{name}="{escape_label_value(labels[name])}"' for name in sorted(labels)) + "}"


def stream_bucket(labels: str, buckets: int) -> int:
    """The bucket of a labels string: sha256, first 8 bytes big-endian, modulo `buckets` (step 4)."""
    digest = hashlib.sha256(labels.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


@dataclass
class StreamLabeler:
    """Chooses each event's stream: a pure function of the event and these settings (see module doc)."""

    label_keys: Sequence[str] = ("source", "type")
    event_label_allowlist: Sequence[str] = ()
    max_streams: int = 0  # 0 = each label set is its own stream; N = N hash buckets
    bucketed_events: int = 0

    def __post_init__(self) -> None:
        self._allow = [(key, sanitize_label_name(key)) for key in self.event_label_allowlist]
        self._buckets: dict[int, tuple[str, dict[str, str]]] = {}

    def full_labels(self, event: Mapping[str, Any]) -> dict[str, str]:
        """The event's own label set, before the bound (steps 1 and 2)."""
        labels: dict[str, str] = {}
        for key in self.label_keys:
            value = event.get(key)
            if isinstance(value, str) and value:
                labels[key] = truncate_label_value(value)
        event_labels = event.get("labels")
        if isinstance(event_labels, Mapping):
            for key, name in self._allow:
                value = event_labels.get(key)
                if isinstance(value, str) and value and name not in labels:
                    labels[name] = truncate_label_value(value)
        return labels

    def labels_for(self, event: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
        """(labels string, pairs) of the stream the event goes to."""
        labels = self.full_labels(event)
        key = format_labels(labels)
        if not self.max_streams:
            return key, labels
        self.bucketed_events += 1
        bucket = stream_bucket(key, self.max_streams)
        stream = self._buckets.get(bucket)
        if stream is None:
            pairs = {BUCKET_LABEL: str(bucket)}
            stream = self._buckets[bucket] = (format_labels(pairs), pairs)
        return stream[0], dict(stream[1])


# --------------------------------------------------------------------------------------------------
# Entries


class InvalidEntry(ValueError):
    """A record that can never become a Loki entry (too long, unreadable). The sink makes it fatal."""


@dataclass(frozen=True, slots=True)
class Entry:
    ts_ns: int
    line: str
    event_hash: str


def timestamp_ns(value: str) -> int:
    """RFC 3339 -> integer nanoseconds since the epoch (exact; the canonical form has microseconds)."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_record(body: bytes, event_hash: str, max_line_bytes: int) -> tuple[Entry, dict[str, Any]]:
    """The entry for one canonical event body, and the decoded event (for its labels)."""
    if len(body) > max_line_bytes:
        raise InvalidEntry(
            f"event {event_hash}: line of {len(body)} bytes exceeds max_line_bytes {max_line_bytes} "
            "(Loki's max_line_size)"
        )
    try:
        event = orjson.loads(body)
        if not isinstance(event, dict):
            raise ValueError("not a JSON object")
        ts = timestamp_ns(str(event["timestamp"]))
        line = body.decode("utf-8")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidEntry(f"event {event_hash}: not a canonical event body ({type(exc).__name__}: {exc})") from None
    return Entry(ts_ns=ts, line=line, event_hash=event_hash), event


@dataclass
class Stream:
    labels: str
    pairs: dict[str, str]
    entries: list[Entry] = field(default_factory=list)


def group_streams(items: Iterable[tuple[str, dict[str, str], Entry]]) -> list[Stream]:
    """Streams in first-seen order, each with its entries sorted by timestamp (stable)."""
    streams: dict[str, Stream] = {}
    for labels, pairs, entry in items:
        stream = streams.get(labels)
        if stream is None:
            stream = streams[labels] = Stream(labels, pairs)
        stream.entries.append(entry)
    for stream in streams.values():
        stream.entries.sort(key=lambda e: e.ts_ns)
    return list(streams.values())


# --------------------------------------------------------------------------------------------------
# Protobuf: logproto.PushRequest, built at runtime


@dataclass(frozen=True)
class _Proto:
    push_request: type[Message]
    stream: type[Message]
    entry: type[Message]
    label_pair: type[Message]


def _field(
    name: str, number: int, kind: int, label: int = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, **kw: str
) -> descriptor_pb2.FieldDescriptorProto:
    return descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=kind, label=label, **kw)  # type: ignore[arg-type]


@cache
def proto() -> _Proto:
    """Loki's push.proto (package logproto): PushRequest, StreamAdapter, EntryAdapter, LabelPairAdapter."""
    f = descriptor_pb2.FieldDescriptorProto
    repeated = f.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(
        name="pkg/push/push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    file.message_type.add(name="PushRequest").field.extend(
        [_field("streams", 1, f.TYPE_MESSAGE, repeated, type_name=".logproto.StreamAdapter")]
    )
    file.message_type.add(name="StreamAdapter").field.extend(
        [
            _field("labels", 1, f.TYPE_STRING),
            _field("entries", 2, f.TYPE_MESSAGE, repeated, type_name=".logproto.EntryAdapter"),
            _field("hash", 3, f.TYPE_UINT64),
        ]
    )
    file.message_type.add(name="EntryAdapter").field.extend(
        [
            _field("timestamp", 1, f.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp"),
            _field("line", 2, f.TYPE_STRING),
            _field(
                "structuredMetadata",
                3,
                f.TYPE_MESSAGE,
                repeated,
                type_name=".logproto.LabelPairAdapter",
                json_name="structuredMetadata",
            ),
        ]
    )
    file.message_type.add(name="LabelPairAdapter").field.extend(
        [_field("name", 1, f.TYPE_STRING), _field("value", 2, f.TYPE_STRING)]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(file.SerializeToString())

    def cls(name: str) -> type[Message]:
        message_class: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"logproto.{name}"))
        return message_class

    return _Proto(cls("PushRequest"), cls("StreamAdapter"), cls("EntryAdapter"), cls("LabelPairAdapter"))


def _varint_len(value: int) -> int:
    if value < 0:
        return 10  # negative int64 varints always take 10 bytes
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _len_field(payload: int) -> int:
    """Bytes of a length-delimited field with a one-byte tag and `payload` bytes of content."""
    return 1 + _varint_len(payload) + payload


def _pb_entry_size(entry: Entry) -> int:
    seconds, nanos = divmod(entry.ts_ns, 1_000_000_000)
    ts = (1 + _varint_len(seconds) if seconds else 0) + (1 + _varint_len(nanos) if nanos else 0)
    line = len(entry.line.encode("utf-8"))
    return _len_field(ts) + (_len_field(line) if line else 0)


def encode_protobuf(streams: Sequence[Stream]) -> bytes:
    """The serialised PushRequest (not compressed)."""
    p = proto()
    request: Any = p.push_request()
    for stream in streams:
        adapter = request.streams.add()
        adapter.labels = stream.labels
        for entry in stream.entries:
            item = adapter.entries.add()
            seconds, nanos = divmod(entry.ts_ns, 1_000_000_000)
            item.timestamp.seconds = seconds
            item.timestamp.nanos = nanos
            item.line = entry.line
    return bytes(request.SerializeToString())


# --------------------------------------------------------------------------------------------------
# JSON


def _json_value(entry: Entry) -> bytes:
    return b'["' + str(entry.ts_ns).encode() + b'",' + orjson.dumps(entry.line) + b"]"


def _json_stream_head(stream: Stream) -> bytes:
    return b'{"stream":' + orjson.dumps(stream.pairs) + b',"values":['


def encode_json(streams: Sequence[Stream]) -> bytes:
    """The JSON push body (not compressed)."""
    parts = []
    for stream in streams:
        parts.append(_json_stream_head(stream) + b",".join(_json_value(e) for e in stream.entries) + b"]}")
    return b'{"streams":[' + b",".join(parts) + b"]}"


# --------------------------------------------------------------------------------------------------
# Splitting and the final body


@dataclass
class Push:
    streams: list[Stream]
    raw_size: int  # encoded size before compression

    @property
    def entries(self) -> int:
        return sum(len(s.entries) for s in self.streams)


@dataclass
class _Sizer:
    """Exact encoded size of a push as streams and entries are added (before compression)."""

    encoding: Encoding
    closed: int = 0  # bytes of the finished streams, framing included
    streams: int = 0
    inner: int = -1  # content bytes of the open stream; -1 = none open
    count: int = 0  # entries in the open stream

    def _stream_bytes(self, inner: int) -> int:
        # protobuf: field 1 of PushRequest; json: the open stream's content plus its closing "]}".
        return _len_field(inner) if self.encoding == "protobuf" else inner + 2

    def _total(self, closed: int, streams: int, inner: int) -> int:
        size = closed + (self._stream_bytes(inner) if inner >= 0 else 0)
        if self.encoding == "protobuf":
            return size
        return len(b'{"streams":[]}') + size + max(0, streams - 1)  # commas between streams

    def _step(self, stream: Stream, entry: Entry, new_stream: bool) -> tuple[int, int, int, int]:
        closed, streams, inner, count = self.closed, self.streams, self.inner, self.count
        if new_stream:
            if inner >= 0:
                closed += self._stream_bytes(inner)
            streams += 1
            if self.encoding == "protobuf":
                inner = _len_field(len(stream.labels.encode("utf-8")))
            else:
                inner = len(_json_stream_head(stream))
            count = 0
        if self.encoding == "protobuf":
            inner += _len_field(_pb_entry_size(entry))
        else:
            inner += len(_json_value(entry)) + (1 if count else 0)
        return closed, streams, inner, count + 1

    def total(self) -> int:
        return self._total(self.closed, self.streams, self.inner)

    def size_with(self, stream: Stream, entry: Entry, new_stream: bool) -> int:
        """The total if `entry` were added (opening a part of `stream` first when `new_stream`)."""
        closed, streams, inner, _ = self._step(stream, entry, new_stream)
        return self._total(closed, streams, inner)

    def add(self, stream: Stream, entry: Entry, new_stream: bool) -> None:
        self.closed, self.streams, self.inner, self.count = self._step(stream, entry, new_stream)


def build_pushes(streams: Sequence[Stream], encoding: Encoding, max_push_bytes: int) -> list[Push]:
    """Cut the streams into pushes of at most `max_push_bytes` encoded bytes each (see module doc)."""
    pushes: list[Push] = []
    current: list[Stream] = []
    sizer = _Sizer(encoding)

    def finish() -> None:
        nonlocal current, sizer
        if current:
            pushes.append(Push(current, sizer.total()))
        current, sizer = [], _Sizer(encoding)

    for stream in streams:
        part: Stream | None = None
        for entry in stream.entries:
            new_stream = part is None
            if current and sizer.size_with(stream, entry, new_stream) > max_push_bytes:
                finish()
                part, new_stream = None, True
            if part is None:
                part = Stream(stream.labels, stream.pairs)
                current.append(part)
            sizer.add(stream, entry, new_stream)
            part.entries.append(entry)
    finish()
    return pushes


@dataclass(frozen=True)
class Body:
    content: bytes
    headers: dict[str, str]
    raw_size: int


def encode_push(push: Push, encoding: Encoding) -> Body:
    """The HTTP body and headers of one push: protobuf + snappy block, or JSON + gzip."""
    if encoding == "protobuf":
        raw = encode_protobuf(push.streams)
        return Body(bytes(cramjam.snappy.compress_raw(raw)), {"content-type": "application/x-protobuf"}, len(raw))
    raw = encode_json(push.streams)
    return Body(
        gzip.compress(raw, compresslevel=5, mtime=0),
        {"content-type": "application/json", "content-encoding": "gzip"},
        len(raw),
    )
