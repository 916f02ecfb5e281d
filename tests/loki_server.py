"""A Loki-protocol test server: POST /loki/api/v1/push decoded and validated the way Loki does it.

Runs in a thread on 127.0.0.1 (free port); usable from a subprocess worker and from the test's event loop.

Decoding (as Loki's push handler):
  Content-Encoding  "" or "snappy": as is; "gzip"; "deflate"; anything else -> 415.
  Content-Type      application/json -> JSON {"streams":[{"stream":{..},"values":[["<ns>","<line>"(,{sm})]]}]};
                    anything else (application/x-protobuf, none) -> snappy BLOCK decompression (the framed
                    format, or anything corrupt, is "snappy: corrupt input", 400) then logproto.PushRequest,
                    decoded here from the protobuf wire format by hand (field numbers 1/2/3 of PushRequest,
                    StreamAdapter, EntryAdapter, google.protobuf.Timestamp), independent of the sink's code.

Validation (distributor, then ingester), per stream and per entry:
  - the labels string parses ({name="value", ...}, Go string escapes), names match [a-zA-Z_][a-zA-Z0-9_]*,
    no duplicate names, at least one label (empty values count as absent); at most `max_label_names`
    labels, names <= 1024 bytes, values <= 2048 bytes. A bad stream is rejected with all its entries.
  - entry older than now - reject_old_samples_max_age: "entry for stream '...' has timestamp too old"
  - entry newer than now + creation_grace_period: "... has timestamp too new"
  - line longer than max_line_size bytes: "Max entry size '...' bytes exceeded for stream ..."
  - ingester, per stream, entries in push order (Loki's stream.validateEntries, then the head block):
      1. the same timestamp and line as the stream's last accepted entry: dropped, not an error;
      2. unordered_writes=True (Loki's default): older than the stream's newest - max_chunk_age/2 is
         "entry too far behind"; unordered_writes=False: older than the newest is "entry out of order".
         These checks come before any other duplicate check: a re-sent entry that is too far behind (or
         out of order) is rejected like a new one, although the stream holds it;
      3. an exact duplicate of a stored entry (same tenant, stream, timestamp and line) is dropped, not an
         error (the unordered head block drops it; with ordered writes Loki's queries drop it). The same
         timestamp with another line is a new entry and is stored;
      4. the entry becomes the stream's last, and its newest when it is newer.
    (Loki's text, "entry with timestamp ... ignored, reason: '...'," at most 10 per stream, then
    "user '...', total ignored: N out of M for stream: {...}".)
  Any rejected entry -> 400 naming them; the valid entries of the same push are stored all the same (as
  Loki's distributor forwards the valid entries and its ingester stores the accepted ones). Accepted -> 204.
  `Request.stored` and `Request.duplicates` count what a push stored and what it re-sent.

Fault injection: `script(Forced(429, {"Retry-After": "2"}), Forced(500))` answers the next requests with
those responses without storing anything (`after_store=True`: store first, then answer with the fault, like
a response lost on the way back; `delay`: sleep first; `hold`: sleep after storing, before answering, e.g. to
kill the client while its push is stored and unanswered). Every request is recorded (`requests`).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cramjam

PUSH_PATH = "/loki/api/v1/push"
SNAPPY_FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"
DEFAULT_TENANT = "fake"  # what single-tenant Loki calls its tenant


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Forced:
    """A scripted response: status, headers, body; `after_store` stores the push first; `delay` in seconds."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    after_store: bool = False
    delay: float = 0.0
    hold: float = 0.0


@dataclass
class Request:
    at: float  # time.monotonic()
    wall: float  # time.time()
    method: str
    path: str
    tenant: str | None
    authorization: str | None
    content_type: str | None
    content_encoding: str | None
    size: int  # body bytes as received
    status: int = 0
    message: str = ""
    forced: bool = False
    entries: int = 0  # entries in the push (0 when it could not be decoded)
    stored: int = 0  # entries newly stored
    duplicates: int = 0  # entries dropped as exact duplicates of stored ones


@dataclass
class StreamData:
    labels: dict[str, str]
    entries: list[tuple[int, str]] = field(default_factory=list)
    seen: set[tuple[int, str]] = field(default_factory=set)
    newest: int | None = None
    last: tuple[int, str] | None = None  # the last accepted entry


@dataclass
class PushedEntry:
    ts_ns: int
    line: str
    structured_metadata: dict[str, str]


@dataclass
class PushedStream:
    labels: str
    entries: list[PushedEntry]
    stream_hash: int = 0


# --------------------------------------------------------------------------------------------------
# Decoding


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BadRequest("proto: unexpected EOF")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise BadRequest("proto: integer overflow")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message; values of LEN fields are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise BadRequest("proto: illegal tag 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise BadRequest("proto: unexpected EOF")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise BadRequest("proto: unexpected EOF")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise BadRequest("proto: unexpected EOF")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise BadRequest(f"proto: illegal wireType {wire}")


def _expect_bytes(name: str, wire: int, value: int | bytes) -> bytes:
    if wire != 2 or not isinstance(value, bytes):
        raise BadRequest(f"proto: wrong wireType = {wire} for field {name}")
    return value


def _expect_int(name: str, wire: int, value: int | bytes) -> int:
    if wire != 0 or not isinstance(value, int):
        raise BadRequest(f"proto: wrong wireType = {wire} for field {name}")
    return value


def _utf8(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"proto: field {name} contains invalid UTF-8") from None


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_push_protobuf(raw: bytes) -> list[PushedStream]:
    """logproto.PushRequest from its wire format (snappy already removed)."""
    streams = []
    for number, wire, value in _fields(raw):
        if number != 1:
            continue  # unknown fields are skipped, as protobuf does
        labels, entries, stream_hash = "", [], 0
        for s_number, s_wire, s_value in _fields(_expect_bytes("streams", wire, value)):
            if s_number == 1:
                labels = _utf8("labels", _expect_bytes("labels", s_wire, s_value))
            elif s_number == 2:
                entries.append(_decode_entry(_expect_bytes("entries", s_wire, s_value)))
            elif s_number == 3:
                stream_hash = _expect_int("hash", s_wire, s_value)
        streams.append(PushedStream(labels, entries, stream_hash))
    return streams


def _decode_entry(raw: bytes) -> PushedEntry:
    seconds = nanos = 0
    line = ""
    metadata: dict[str, str] = {}
    for number, wire, value in _fields(raw):
        if number == 1:
            for t_number, t_wire, t_value in _fields(_expect_bytes("timestamp", wire, value)):
                if t_number == 1:
                    seconds = _signed64(_expect_int("seconds", t_wire, t_value))
                elif t_number == 2:
                    nanos = _signed64(_expect_int("nanos", t_wire, t_value))
        elif number == 2:
            line = _utf8("line", _expect_bytes("line", wire, value))
        elif number == 3:
            name = value_ = ""
            for p_number, p_wire, p_value in _fields(_expect_bytes("structuredMetadata", wire, value)):
                if p_number == 1:
                    name = _utf8("name", _expect_bytes("name", p_wire, p_value))
                elif p_number == 2:
                    value_ = _utf8("value", _expect_bytes("value", p_wire, p_value))
            metadata[name] = value_
    if not 0 <= nanos < 1_000_000_000:
        raise BadRequest(f"timestamp: nanos not in range [0, 1e9): {nanos}")
    return PushedEntry(seconds * 1_000_000_000 + nanos, line, metadata)


def decode_push_json(raw: bytes) -> list[PushedStream]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"loghttp.PushRequest: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list):
        raise BadRequest('loghttp.PushRequest: expected {"streams": [...]}')
    streams = []
    for stream in doc["streams"]:
        if not isinstance(stream, dict):
            raise BadRequest("loghttp.PushRequest: a stream is an object")
        labels = stream.get("stream") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise BadRequest('loghttp.PushRequest: "stream" must map label names to strings')
        entries = []
        for value in stream.get("values") or []:
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise BadRequest('loghttp.PushRequest: a value is ["<ns>", "<line>"(, {metadata})]')
            ts, line = value[0], value[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise BadRequest(f"loghttp.PushRequest: timestamp {ts!r} is not a string of nanoseconds")
            if not isinstance(line, str):
                raise BadRequest("loghttp.PushRequest: a line must be a string")
            metadata = value[2] if len(value) == 3 else {}
            if not isinstance(metadata, dict):
                raise BadRequest("loghttp.PushRequest: structured metadata must be an object")
            entries.append(PushedEntry(int(ts), line, {str(k): str(v) for k, v in metadata.items()}))
        streams.append(PushedStream(format_labels(labels), entries))
    return streams


def decode_body(body: bytes, content_type: str | None, content_encoding: str | None) -> list[PushedStream]:
    """The push body as Loki's handler reads it; raises BadRequest (status 400/415) like Loki."""
    encoding = (content_encoding or "").strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "snappy"):
            raise BadRequest(f"Content-Encoding {content_encoding!r} not supported", status=415)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadRequest(f"{encoding}: invalid data: {exc}") from None
    media = _media_type(content_type)
    if media == "application/json":
        return decode_push_json(body)
    if body.startswith(SNAPPY_FRAMED_MAGIC):
        raise BadRequest("snappy: corrupt input")  # framed snappy: Loki wants the block format
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except Exception:
        raise BadRequest("snappy: corrupt input") from None
    return decode_push_protobuf(raw)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    message = Message()
    message["content-type"] = content_type
    return message.get_content_type()


# --------------------------------------------------------------------------------------------------
# Labels


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def parse_labels(text: str) -> dict[str, str]:
    """Loki's labels string {name="value", ...}; raises ValueError like its parser."""
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueError("1:1: parse error: unexpected input, expected {")
    pos, end = 1, len(s) - 1
    labels: dict[str, str] = {}

    def skip_space(p: int) -> int:
        while p < end and s[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_space(pos)
    while pos < end:
        start = pos
        while pos < end and (s[pos].isascii() and (s[pos].isalnum() or s[pos] == "_")):
            pos += 1
        name = s[start:pos]
        if not name or name[0].isdigit():
            raise ValueError(
                f"1:{start + 1}: parse error: unexpected character inside braces: {s[start : start + 1]!r}"
            )
        if pos < end and s[pos] not in " \t\r\n=":
            raise ValueError(f"1:{pos + 1}: parse error: unexpected character inside braces: {s[pos]!r}")
        pos = skip_space(pos)
        if pos >= end or s[pos] != "=":
            raise ValueError(f"1:{pos + 1}: parse error: unexpected character after label name, expected =")
        pos = skip_space(pos + 1)
        if pos >= end or s[pos] != '"':
            raise ValueError(f"1:{pos + 1}: parse error: unexpected character, expected quoted string")
        pos += 1
        chars: list[str] = []
        while True:
            if pos >= end:
                raise ValueError("parse error: unterminated quoted string")
            c = s[pos]
            if c == "\n":
                raise ValueError("parse error: newline in quoted string")
            if c == '"':
                pos += 1
                break
            if c == "\\":
                pos += 1
                if pos >= end:
                    raise ValueError("parse error: unterminated escape")
                e = s[pos]
                if e in _ESCAPES:
                    chars.append(_ESCAPES[e])
                    pos += 1
                elif e in "xuU":
                    width = {"x": 2, "u": 4, "U": 8}[e]
                    digits = s[pos + 1 : pos + 1 + width]
                    if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                        raise ValueError(f"parse error: invalid escape \\{e}{digits}")
                    chars.append(chr(int(digits, 16)))
                    pos += 1 + width
                else:
                    raise ValueError(f"parse error: unknown escape sequence \\{e}")
                continue
            chars.append(c)
            pos += 1
        if name in labels:
            raise DuplicateLabel(name)
        labels[name] = "".join(chars)
        pos = skip_space(pos)
        if pos < end:
            if s[pos] != ",":
                raise ValueError(f"1:{pos + 1}: parse error: unexpected character, expected , or }}")
            pos = skip_space(pos + 1)
    return labels


class DuplicateLabel(ValueError):
    pass


def _go_quote(value: str) -> str:
    out = ['"']
    for c in value:
        if c in '\\"':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def format_labels(labels: dict[str, str]) -> str:
    """Canonical labels string (sorted names, Go quoting): how streams are keyed and shown."""
    return "{" + ", ".join(f"{name}={_go_quote(labels[name])}" for name in sorted(labels)) + "}"


def _valid_name(name: str) -> bool:
    return bool(name) and name.isascii() and not name[0].isdigit() and all(c.isalnum() or c == "_" for c in name)


# --------------------------------------------------------------------------------------------------
# Time formatting as Go prints it


def _go_time(ns: int) -> str:
    """time.Time.String() in UTC: 2026-11-22 10:00:00.123456 +0000 UTC (fraction without trailing zeros)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    fraction = f".{frac:09d}".rstrip("0") if frac else ""
    return f"{base}{fraction} +0000 UTC"


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# The server


@dataclass
class LokiServer:
    max_line_size: int = 256 * 1024
    reject_old_samples_max_age: float | None = 7 * 86_400.0  # seconds; None = reject_old_samples: false
    creation_grace_period: float | None = 600.0  # seconds; None = accept any future timestamp
    unordered_writes: bool = True
    max_chunk_age: float = 7_200.0  # seconds; entries older than newest - max_chunk_age/2 are too far behind
    max_label_names: int = 15
    max_label_name_length: int = 1024
    max_label_value_length: int = 2048
    max_body_bytes: int | None = None  # decompressed; larger -> 413
    auth_enabled: bool = False  # require X-Scope-OrgID (401 "no org id" without)
    required_authorization: str | None = None  # exact Authorization header required (else 401)
    ready: bool = True  # GET /ready: 200 "ready", else 503 like a Loki whose ingester is not ready
    clock: Any = time.time

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.forced: list[Forced] = []
        self.requests: list[Request] = []
        self.data: dict[tuple[str, str], StreamData] = {}  # (tenant, labels) -> stream
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> LokiServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server_self._handle(self, "GET")

            def do_POST(self) -> None:
                server_self._handle(self, "POST")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="loki-test-server", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- fault injection and inspection

    def script(self, *responses: Forced) -> None:
        with self.lock:
            self.forced.extend(responses)

    def pushes(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == PUSH_PATH]

    def streams(self, tenant: str | None = None) -> dict[str, list[tuple[int, str]]]:
        """labels string -> stored (ts_ns, line), in arrival order (all tenants when tenant is None)."""
        with self.lock:
            out: dict[str, list[tuple[int, str]]] = {}
            for (t, labels), stream in self.data.items():
                if tenant is None or t == tenant:
                    out.setdefault(labels, []).extend(stream.entries)
            return out

    def label_sets(self, tenant: str | None = None) -> list[dict[str, str]]:
        with self.lock:
            return [dict(s.labels) for (t, _), s in self.data.items() if tenant is None or t == tenant]

    def tenants(self) -> set[str]:
        with self.lock:
            return {t for t, _ in self.data}

    def lines(self, tenant: str | None = None) -> list[str]:
        return [line for entries in self.streams(tenant).values() for _, line in entries]

    def events(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines(tenant)]

    def count(self, tenant: str | None = None) -> int:
        return len(self.lines(tenant))

    # -- handling

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?", 1)[0]
        request = Request(
            at=time.monotonic(),
            wall=time.time(),
            method=method,
            path=path,
            tenant=handler.headers.get("x-scope-orgid"),
            authorization=handler.headers.get("authorization"),
            content_type=handler.headers.get("content-type"),
            content_encoding=handler.headers.get("content-encoding"),
            size=len(body),
        )
        headers: dict[str, str] = {}
        forced: Forced | None = None
        if method == "GET" and path == "/ready":
            status, text = (
                (200, "ready") if self.ready else (503, "Ingester not ready: waiting for 15s after being ready")
            )
        elif method == "POST" and path == PUSH_PATH:
            with self.lock:
                forced = self.forced.pop(0) if self.forced else None
            if forced is not None and forced.delay:
                time.sleep(forced.delay)
            if forced is not None and not forced.after_store:
                status, text, headers = forced.status, forced.body, forced.headers
                request.forced = True
            else:
                status, text = self._push(request, body)
                if forced is not None and forced.hold:
                    time.sleep(forced.hold)
                if forced is not None:
                    status, text, headers = forced.status, forced.body, forced.headers
                    request.forced = True
        else:
            status, text = 404, "404 page not found"
        request.status, request.message = status, text
        with self.lock:
            self.requests.append(request)
        payload = text.encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if payload or status != 204:
            handler.send_header("content-type", "text/plain; charset=utf-8")
        handler.send_header("content-length", str(len(payload)) if status != 204 else "0")
        handler.end_headers()
        if status != 204 and payload:
            handler.wfile.write(payload)

    def _push(self, request: Request, body: bytes) -> tuple[int, str]:
        if self.required_authorization is not None and request.authorization != self.required_authorization:
            return 401, "unauthorized"
        if self.auth_enabled and not request.tenant:
            return 401, "no org id"
        tenant = request.tenant or DEFAULT_TENANT
        try:
            streams = decode_body(body, request.content_type, request.content_encoding)
        except BadRequest as exc:
            return exc.status, str(exc)
        request.entries = sum(len(s.entries) for s in streams)
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            return 413, f"request body too large: {len(body)} bytes, limit: {self.max_body_bytes} bytes"
        if not streams:
            return 204, ""
        errors: list[str] = []
        now_ns = int(self.clock() * 1_000_000_000)
        with self.lock:
            for stream in streams:
                self._ingest(tenant, stream, now_ns, errors, request)
        if errors:
            return 400, "\n".join(errors)
        return 204, ""

    def _validate_labels(self, text: str) -> tuple[dict[str, str] | None, str | None]:
        try:
            parsed = parse_labels(text)
        except DuplicateLabel as exc:
            return None, f"stream '{text}' has duplicate label name: '{exc}'"
        except ValueError as exc:
            return None, f"Error parsing labels '{text}' with error: {exc}"
        labels = {k: v for k, v in parsed.items() if v != ""}
        for name in labels:
            if not _valid_name(name):
                return None, f"Error parsing labels '{text}' with error: invalid label name {name!r}"
        if not labels:
            return None, "error at least one label pair is required per stream"
        if len(labels) > self.max_label_names:
            return None, f"entry for stream '{text}' has {len(labels)} label names; limit {self.max_label_names}"
        for name, value in labels.items():
            if len(name.encode()) > self.max_label_name_length:
                return None, f"stream '{text}' has label name too long: '{name}'"
            if len(value.encode()) > self.max_label_value_length:
                return None, f"stream '{text}' has label value too long: '{value}'"
        return labels, None

    def _ingest(self, tenant: str, pushed: PushedStream, now_ns: int, errors: list[str], request: Request) -> None:
        labels, problem = self._validate_labels(pushed.labels)
        if labels is None:
            errors.append(problem or "invalid stream")
            return
        key = format_labels(labels)
        valid: list[PushedEntry] = []
        for entry in pushed.entries:  # distributor: per-entry validation
            if self.reject_old_samples_max_age is not None:
                oldest = now_ns - int(self.reject_old_samples_max_age * 1_000_000_000)
                if entry.ts_ns < oldest:
                    errors.append(
                        f"entry for stream '{key}' has timestamp too old: {_rfc3339(entry.ts_ns)}, "
                        f"oldest acceptable timestamp is: {_rfc3339(oldest)}"
                    )
                    continue
            grace = self.creation_grace_period
            if grace is not None and entry.ts_ns > now_ns + int(grace * 1_000_000_000):
                errors.append(f"entry for stream '{key}' has timestamp too new: {_rfc3339(entry.ts_ns)}")
                continue
            if len(entry.line.encode()) > self.max_line_size:
                errors.append(
                    f"Max entry size '{self.max_line_size}' bytes exceeded for stream '{key}' while adding an "
                    f"entry with length '{len(entry.line.encode())}' bytes"
                )
                continue
            valid.append(entry)
        if not valid:
            return
        stream = self.data.get((tenant, key))
        if stream is None:
            stream = self.data[(tenant, key)] = StreamData(labels)
        ignored: list[str] = []
        for entry in valid:  # ingester: per-stream order, then duplicates (see the module doc)
            item = (entry.ts_ns, entry.line)
            if item == stream.last:
                request.duplicates += 1
                continue
            problem = self._order_problem(stream, entry.ts_ns)
            if problem:
                ignored.append(f"entry with timestamp {_go_time(entry.ts_ns)} ignored, reason: '{problem}',")
                continue
            stream.last = item
            stream.newest = entry.ts_ns if stream.newest is None else max(stream.newest, entry.ts_ns)
            if item in stream.seen:
                request.duplicates += 1
                continue
            stream.entries.append(item)
            stream.seen.add(item)
            request.stored += 1
        if ignored:
            errors.append(
                "\n".join(ignored[:10])
                + f"\nuser '{tenant}', total ignored: {len(ignored)} out of {len(valid)} for stream: {key}"
            )

    def _order_problem(self, stream: StreamData, ts_ns: int) -> str | None:
        """Loki's reason to reject an entry for its place in the stream, or None."""
        if stream.newest is None:
            return None
        if not self.unordered_writes:
            return "entry out of order" if ts_ns < stream.newest else None
        cutoff = stream.newest - int(self.max_chunk_age / 2 * 1_000_000_000)
        if ts_ns < cutoff:
            return (
                f"entry too far behind, entry timestamp is: {_rfc3339(ts_ns)}, oldest acceptable timestamp is: "
                f"{_rfc3339(cutoff)}"
            )
        return None


@contextmanager
def loki_server(**options: Any) -> Iterator[LokiServer]:
    server = LokiServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
