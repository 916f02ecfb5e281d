"""Dead letters as JSON lines, lossless: one object per record.

    {"topic": "sink.tsdb.dlq", "partition": 0, "offset": 12, "timestamp": 1795000000123,
     "key": "ab12...", "key_encoding": "utf-8",
     "value": "{\\"source\\": ...}", "value_encoding": "utf-8",
     "headers": [{"name": "pipeline.error.class", "value": "FatalSinkError", "encoding": "utf-8"}, ...]}

`timestamp` is the record's, in epoch milliseconds. Bytes that are not UTF-8 are base64 with encoding
"base64"; a null key, value or header value is JSON null. Headers are a list: order and repeated names
are kept. topic, partition and offset say where the record was; import ignores them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from pipeline.dlq.records import DeadLetter

UTF8 = "utf-8"
BASE64 = "base64"


class CodecError(ValueError):
    """A line is not a dead letter in this format."""


def _bytes_out(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode(UTF8), UTF8
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), BASE64


def _bytes_in(text: Any, encoding: Any, what: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise CodecError(f"{what} must be a string or null")
    if encoding in (UTF8, None):
        return text.encode(UTF8)
    if encoding == BASE64:
        try:
            return base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise CodecError(f"{what} is not valid base64: {exc}") from None
    raise CodecError(f"{what} has unknown encoding {encoding!r} (utf-8 or base64)")


def encode(record: DeadLetter) -> str:
    key, key_encoding = _bytes_out(record.key)
    value, value_encoding = _bytes_out(record.value)
    headers = []
    for name, raw in record.headers:
        text, encoding = _bytes_out(raw)
        headers.append({"name": name, "value": text, "encoding": encoding})
    body = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": key,
        "key_encoding": key_encoding,
        "value": value,
        "value_encoding": value_encoding,
        "headers": headers,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def decode(line: str) -> DeadLetter:
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CodecError("not a JSON object")
    timestamp = body.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise CodecError("timestamp must be an integer (epoch milliseconds)")
    raw_headers = body.get("headers", [])
    if raw_headers is None:
        raw_headers = []
    if not isinstance(raw_headers, list):
        raise CodecError("headers must be a list")
    headers: list[tuple[str, bytes | None]] = []
    for index, item in enumerate(raw_headers):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise CodecError(f"headers[{index}] must be an object with a name")
        headers.append((item["name"], _bytes_in(item.get("value"), item.get("encoding"), f"headers[{index}]")))
    return DeadLetter(
        topic=str(body.get("topic") or ""),
        partition=int(body.get("partition") or 0),
        offset=int(body.get("offset", -1) or 0),
        timestamp_ms=timestamp,
        key=_bytes_in(body.get("key"), body.get("key_encoding"), "key"),
        value=_bytes_in(body.get("value"), body.get("value_encoding"), "value"),
        headers=tuple(headers),
    )
