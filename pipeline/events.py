"""The event model, its canonical JSON form and its content hash.

An event on the ingest topic is a UTF-8 JSON object:

    {"id": "optional", "timestamp": "2026-11-22T10:00:00Z", "source": "ship-7", "type": "engine.temp",
     "labels": {"deck": "2"}, "payload": {...any JSON...}, "idempotency_key": "optional"}

Content hash: sha256 (hex) of the canonical JSON of the normalised event, which covers `id` (when set),
`timestamp` (normalised to UTC, microseconds, `Z`), `source`, `type`, `labels` and `payload`. Key order,
whitespace, number spelling (1.0 vs 1.00), the Kafka key and the headers do not count. When the producer
gives an idempotency key (field `idempotency_key` or header `idempotency-key`), the hash is sha256 of
that key instead, so two different bodies with one key are one event.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_KEY_LEN = 512


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_KEY_LEN)
    timestamp: datetime
    source: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=256)
    labels: dict[str, str] = Field(default_factory=dict)
    payload: Any = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_KEY_LEN)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. 2026-11-22T10:00:00Z)")
        return value.astimezone(UTC)

    def canonical_dict(self) -> dict[str, Any]:
        """The fields that make up the event's identity and its stored form (no idempotency key)."""
        body: dict[str, Any] = {
            "timestamp": format_timestamp(self.timestamp),
            "source": self.source,
            "type": self.type,
            "labels": self.labels,
            "payload": self.payload,
        }
        if self.id is not None:
            body["id"] = self.id
        return body


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8, exact integers. Raises ValueError on values
    that have no canonical JSON form (NaN, infinities, lone surrogates)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text that is not valid Unicode: {exc.reason}") from None


def content_hash(event: Event) -> str:
    if event.idempotency_key is not None:
        return key_hash(event.idempotency_key)
    return hashlib.sha256(canonical_json(event.canonical_dict())).hexdigest()


def key_hash(idempotency_key: str) -> str:
    return hashlib.sha256(b"idempotency-key\x00" + idempotency_key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Parsing what arrives on the ingest topic


class Rejection(ValueError):
    """Why a message cannot become an event. `reason` is a short stable code for DLQ headers/metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


REASONS = ("empty", "too_large", "invalid_utf8", "invalid_json", "schema")


@dataclass(frozen=True)
class AcceptedEvent:
    event: Event
    event_hash: str
    body: bytes  # canonical JSON of event.canonical_dict(): what travels downstream and is stored


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_event(raw: bytes | None, max_bytes: int, header_key: str | None = None) -> AcceptedEvent:
    """Validate one ingest message. Raises `Rejection` with the reason; never anything else."""
    if raw is None or len(raw) == 0 or not raw.strip():
        raise Rejection("empty", "the message is empty")
    if len(raw) > max_bytes:
        raise Rejection("too_large", f"the message is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection("invalid_utf8", f"not UTF-8 at byte {exc.start}: {exc.reason}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Rejection("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejection("schema", f"an event is a JSON object, got {type(obj).__name__}")
    if header_key is not None and obj.get("idempotency_key") is None:
        obj["idempotency_key"] = header_key
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise Rejection("schema", _schema_problems(exc)) from None
    try:
        body = canonical_json(event.canonical_dict())
    except ValueError as exc:
        raise Rejection("schema", str(exc)) from None
    event_hash = (
        key_hash(event.idempotency_key) if event.idempotency_key is not None else hashlib.sha256(body).hexdigest()
    )
    return AcceptedEvent(event=event, event_hash=event_hash, body=body)


def _schema_problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
