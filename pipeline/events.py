"""The event model, its canonical JSON form and its content hash.

An event on the ingest topic is a UTF-8 JSON object:

    {"id": "optional", "timestamp": "2026-11-22T10:00:00Z", "source": "ship-7", "type": "engine.temp",
     "labels": {"deck": "2"}, "payload": {...any JSON...}, "idempotency_key": "optional"}

Content hash: sha256 (hex) of the canonical JSON of the normalised event, which covers `id` (when set),
`timestamp` (normalised to UTC, microseconds, `Z`), `source`, `type`, `labels` and `payload`. Key order,
whitespace, number spelling, the Kafka key and the headers do not count. When the producer gives an
idempotency key (field `idempotency_key` or header `idempotency-key`), the hash is sha256 of that key
instead, so two different bodies with one key are one event.

Numbers are exact: they are never converted to binary floating point. A number is its exact decimal
value, so `1`, `1.0`, `1.00`, `1e0`, `10E-1` and `-0` vs `0` are the same number, while `0.1` and
`0.10000000000000000001` (equal as floats) are different numbers, as are integers beyond 64 bits that
differ in their last digit. The canonical spelling (`canonical_number`) of a value `digits x 10^exp`
(no leading or trailing zeros in `digits`):

- no sign on zero, no exponent, no decimal point for integral values, no trailing zeros after the point:
  `1e9` -> `1000000000`, `1.50` -> `1.5`, `-0.0` -> `0`, `2.5e-3` -> `0.0025`;
- exponent notation `d.ddde+N` / `d.ddde-N` only where plain notation would need more than 20 zeros
  after the significant digits or more than 5 zeros after the decimal point: `1e21` -> `1e+21`,
  `1.5e-7` -> `1.5e-7`, `123e30` -> `1.23e+32` (the thresholds of JavaScript's number formatting, so a
  number grows by at most 20 characters and an exponent of any size stays short).

The canonical body carries these spellings to every sink; PostgreSQL jsonb stores them as exact numerics.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_KEY_LEN = 512
MAX_DEPTH = 254  # levels of arrays and objects in an event, the event object included (orjson's limit)


_LEAP_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:60(?![0-9])")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_KEY_LEN)
    timestamp: datetime
    source: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=256)
    labels: dict[str, str] = Field(default_factory=dict)
    payload: Any = Field(default_factory=dict)  # parsed JSON; numbers are exact (see canonical_number)
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_KEY_LEN)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _no_leap_second(cls, value: Any) -> Any:
        if type(value) is str and _LEAP_SECOND.match(value):
            raise ValueError("timestamp has a leap second (:60), which no UTC datetime holds; send :59.999999")
        return value

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. 2026-11-22T10:00:00Z)")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp is outside the years 1-9999 once converted to UTC") from None

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
    """RFC 3339 in UTC with microseconds and `Z`; years below 1000 keep four digits."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# --------------------------------------------------------------------------------------------------
# Exact numbers

MAX_PLAIN_TRAILING_ZEROS = 20  # 1e20 -> 100000000000000000000, 1e21 -> 1e+21
MAX_PLAIN_LEADING_ZEROS = 5  # 1e-6 -> 0.000001, 1e-7 -> 1e-7
MAX_EXPONENT_DIGITS = 9  # |exponent| below 10^9; larger ones are rejected (no sink holds them)


def canonical_number(literal: str) -> str:
    """The canonical spelling of a JSON number literal (see the module docstring). Raises `Rejection`
    for an exponent of 10 or more digits."""
    negative = literal.startswith("-")
    mantissa, _, exponent = (literal[1:] if negative else literal).replace("E", "e").partition("e")
    whole, _, fraction = mantissa.partition(".")
    significant = (whole + fraction).lstrip("0")
    digits = significant.rstrip("0")
    if not digits:
        return "0"
    if len(exponent.lstrip("+-").lstrip("0")) > MAX_EXPONENT_DIGITS:
        raise Rejection("schema", f"number {literal[:40]}: exponent out of range")
    exp = (int(exponent) if exponent else 0) - len(fraction) + len(significant) - len(digits)
    point = len(digits) + exp  # digits before the decimal point (negative: zeros after it)
    if 0 <= exp <= MAX_PLAIN_TRAILING_ZEROS:
        text = digits + "0" * exp
    elif exp < 0 < point:
        text = f"{digits[:point]}.{digits[point:]}"
    elif exp < 0 and -point <= MAX_PLAIN_LEADING_ZEROS:
        text = "0." + "0" * -point + digits
    else:
        tail = f".{digits[1:]}" if len(digits) > 1 else ""
        text = f"{digits[0]}{tail}e{point - 1:+d}"
    return "-" + text if negative else text


def _number(literal: str) -> orjson.Fragment:
    return orjson.Fragment(canonical_number(literal))


def exact(value: Any) -> Any:
    """`value` with every float, Decimal and integer beyond 64 bits replaced by its canonical number, so
    that it is written exactly (for values built in Python; parsed events hold none of them). Raises
    ValueError for NaN and infinities."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [exact(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else _number(str(value))
    if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
        raise ValueError(f"{value} has no JSON form")
    return _number(repr(value) if isinstance(value, float) else str(value))


def _dump(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8. `value` holds no float (see `exact`)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        problem = str(exc)
        if "64-bit" in problem:  # an integer beyond 64 bits: rare, so the slow path
            return orjson.dumps(exact(value), option=orjson.OPT_SORT_KEYS)
        if "surrogates" in problem:
            raise ValueError("text that is not valid Unicode (a lone surrogate)") from None
        if "Recursion" in problem:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
        raise ValueError(problem) from None


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8, exact numbers in canonical spelling. Raises
    ValueError on values that have no canonical JSON form (NaN, infinities, lone surrogates)."""
    try:
        return _dump(exact(value))
    except Rejection as rejection:
        raise ValueError(rejection.message) from None


def content_hash(event: Event) -> str:
    if event.idempotency_key is not None:
        return key_hash(event.idempotency_key)
    return hashlib.sha256(_dump(event.canonical_dict())).hexdigest()


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


# "unprocessable": an unexpected error while handling this one message (a bug to report); the message
# goes to the DLQ like any other rejected one and the agent carries on.
REASONS = ("empty", "too_large", "invalid_utf8", "invalid_json", "schema", "unprocessable")


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    event_hash: str
    body: bytes  # canonical JSON of Event.canonical_dict(): what travels downstream and is stored
    idempotency_key: str | None  # the event's (field or header), when it gave one


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_event(raw: bytes | None, max_bytes: int, header_key: str | None = None) -> AcceptedEvent:
    """Validate one ingest message. Raises `Rejection` with the reason; never anything else. `max_bytes`
    bounds both the message and its canonical body (which can be longer: `1e20` is 21 digits)."""
    try:
        return _parse_event(raw, max_bytes, header_key)
    except Rejection:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise Rejection("unprocessable", f"{type(exc).__name__}: {exc}"[:1000]) from None


def _parse_event(raw: bytes | None, max_bytes: int, header_key: str | None) -> AcceptedEvent:
    if raw is None or len(raw) == 0 or not raw.strip():
        raise Rejection("empty", "the message is empty")
    if len(raw) > max_bytes:
        raise Rejection("too_large", f"the message is {len(raw)} bytes; the limit is {max_bytes}")
    fast = _accept_plain(raw, header_key)
    body, idempotency_key = fast if fast is not None else _accept(raw, header_key)
    if len(body) > max_bytes:
        raise Rejection("too_large", f"the canonical event is {len(body)} bytes; the limit is {max_bytes}")
    event_hash = key_hash(idempotency_key) if idempotency_key is not None else hashlib.sha256(body).hexdigest()
    return AcceptedEvent(event_hash=event_hash, body=body, idempotency_key=idempotency_key)


def _accept(raw: bytes, header_key: str | None) -> tuple[bytes, str | None]:
    """The canonical body and idempotency key of any message (the full path: every rule, every error)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection("invalid_utf8", f"not UTF-8 at byte {exc.start}: {exc.reason}") from None
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise Rejection("schema", f"an event is a JSON object, got {type(obj).__name__}")
    if header_key is not None and obj.get("idempotency_key") is None:
        obj["idempotency_key"] = header_key
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise Rejection("schema", _schema_problems(exc)) from None
    try:
        body = _dump(event.canonical_dict())
    except ValueError as exc:
        raise Rejection("schema", str(exc)) from None
    return body, event.idempotency_key


# --------------------------------------------------------------------------------------------------
# The plain path: what most events are, at a fraction of the cost. It gives exactly what the full path
# gives (tests/unit/test_events.py compares the two over extreme events) or None, and then the full path
# decides. It decodes with orjson, whose numbers are binary floats, so it takes only messages where that
# loses nothing:
# - no exponent of 3 or more digits, so a number of at most 15 significant digits lies well inside the
#   range of normal doubles, where its double gives it back exactly (repr is that same decimal value);
# - every run of 16 or more digits and points (a longer number, or text that looks like one) spells the
#   canonical value of a number the document parsed to. That holds for what serialisers write (the
#   shortest text that gives the double back: 1764625749.1234567, 59.91273456789012) and fails for a
#   number a double cannot hold (0.10000000000000000001, an integer beyond 64 bits): if a float literal L
#   gave a double d whose repr is another value, L's value would have to be the repr of another parsed
#   double e, but then d = float(L) = e, and repr(d) would be L's value after all. (Integer literals are
#   matched against parsed ints only, which orjson parses exactly.)
# Anything else (such text in a string, for one) goes to the full path, which is only slower.

# Digits and points -> "0", exponent letters -> "e", signs -> "+", anything else -> " ": one C pass, then
# substring searches find a 16-character run of digits and points or an exponent of 3 digits.
_NUMBER_SHAPES = bytes(
    ord("0") if chr(b) in "0123456789." else ord("e") if chr(b) in "eE" else ord("+") if chr(b) in "+-" else ord(" ")
    for b in range(256)
)


_LONG_RUN = b"0" * 16  # in the shapes: 16 digits and points in a row


def _number_shapes(raw: bytes) -> tuple[bool, bytes | None]:
    """(whether every exponent is short, the shapes of `raw` when there is a run of 16 or more digits and
    points, else None)."""
    shapes = raw.translate(_NUMBER_SHAPES)
    return b"e000" not in shapes and b"e+000" not in shapes, shapes if _LONG_RUN in shapes else None


_LONG_NUMBER = re.compile(rb"-?[0-9.]{16,}(?:[eE][-+]?[0-9]+)?")


def _long_numbers(raw: bytes, shapes: bytes) -> Iterator[bytes]:
    """What `_LONG_NUMBER.finditer(raw)` finds, found with `bytes.find` in the shapes and matched only where a
    run starts: a scan by the regular expression costs more than the rest of the plain path."""
    start = shapes.find(_LONG_RUN)
    while start >= 0:
        match = _LONG_NUMBER.match(raw, start - 1 if start and raw[start - 1] == 45 else start)  # 45: "-"
        assert match is not None  # 16 digits and points start at `start`
        yield match.group()
        start = shapes.find(_LONG_RUN, match.end())


def _long_numbers_exact(raw: bytes, shapes: bytes, parsed: set[str]) -> bool:
    """Whether every long run in `raw` spells (canonically) the canonical text of one of the `parsed` numbers
    of its kind: a literal with a point or an exponent is a float to orjson, an integer literal an int (one
    beyond 64 bits a float, so never equal to a parsed int)."""
    for run in _long_numbers(raw, shapes):
        literal = run.decode()
        kind = "f" if any(c in literal for c in ".eE") else "i"
        if kind + literal in parsed:  # already canonical (what serialisers write): canonical_number is idempotent
            continue
        try:
            if kind + canonical_number(literal) not in parsed:
                return False
        except ValueError:  # not a number (text in a string): the full path decides
            return False
    return True


_PLAIN_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[-+][0-9]{2}:[0-9]{2})"
)
_FIELDS = frozenset(Event.model_fields)
_NAME_LEN = (1, 256)
_KEY_LEN = (1, MAX_KEY_LEN)


def _accept_plain(raw: bytes, header_key: str | None) -> tuple[bytes, str | None] | None:
    short_exponents, run_shapes = _number_shapes(raw)
    if not short_exponents:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or not _FIELDS.issuperset(obj):
        return None
    source, kind = obj.get("source"), obj.get("type")
    if not (_text(source, _NAME_LEN) and _text(kind, _NAME_LEN)):
        return None
    event_id = obj.get("id")
    idempotency_key = obj.get("idempotency_key")
    if idempotency_key is None:
        idempotency_key = header_key
    if event_id is not None and not _text(event_id, _KEY_LEN):
        return None
    if idempotency_key is not None and not _text(idempotency_key, _KEY_LEN):
        return None
    labels = obj.get("labels", {})
    if type(labels) is not dict or any(type(v) is not str for v in labels.values()):
        return None
    timestamp = _plain_timestamp(obj.get("timestamp"))
    if timestamp is None:
        return None
    numbers: set[str] | None = None if run_shapes is None else set()  # the payload's numbers, to check long runs
    try:
        body: dict[str, Any] = {
            "timestamp": timestamp,
            "source": source,
            "type": kind,
            "labels": labels,
            "payload": _exact_floats(obj["payload"], numbers) if "payload" in obj else {},
        }
        if run_shapes is not None and numbers is not None and not _long_numbers_exact(raw, run_shapes, numbers):
            return None
        if event_id is not None:
            body["id"] = event_id
        return _dump(body), idempotency_key
    except (ValueError, RecursionError):  # the full path names the problem
        return None


def _text(value: object, bounds: tuple[int, int]) -> bool:
    return type(value) is str and bounds[0] <= len(value) <= bounds[1]


def _plain_timestamp(value: object) -> str | None:
    """`format_timestamp` of an RFC 3339 timestamp with `Z` or an offset and at most 6 fraction digits."""
    if type(value) is not str or _PLAIN_TIMESTAMP.fullmatch(value) is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
        if value[-1] != "Z":
            return format_timestamp(stamp)
    except (ValueError, OverflowError):
        return None
    fraction = value[20:-1]  # the pattern and fromisoformat checked the rest: only digits to pad
    return f"{value[:19]}.{fraction}{'000000'[len(fraction) :]}Z"


def _exact_floats(value: Any, numbers: set[str] | None = None) -> Any:
    """`value` (from orjson) with every float as its canonical number; the canonical text of every number
    goes into `numbers` when given, after "f" for a float and "i" for an int."""
    visit = _CONTAINERS_OR_FLOAT if numbers is None else _CONTAINERS_OR_NUMBER
    kind = type(value)
    if kind is dict:
        return {k: _exact_floats(v, numbers) if type(v) in visit else v for k, v in value.items()}
    if kind is list:
        return [_exact_floats(v, numbers) if type(v) in visit else v for v in value]
    if kind is float:
        text = float_text(value)
        if numbers is not None:
            numbers.add("f" + text)
        return orjson.Fragment(text)
    if kind is int and numbers is not None:
        numbers.add("i" + str(value))
    return value


def float_text(value: float) -> str:
    """`canonical_number(repr(value))`, without its general parsing for the common spellings."""
    text = repr(value)
    if "e" in text or "n" in text:  # an exponent; inf and nan are left to canonical_number to refuse
        return canonical_number(text)
    if text.endswith(".0"):
        return "0" if value == 0 else text[:-2]
    return text


_CONTAINERS_OR_FLOAT = frozenset({dict, list, float})
_CONTAINERS_OR_NUMBER = frozenset({dict, list, float, int})


def _loads(text: str) -> Any:
    """JSON with exact numbers: every literal with a fraction or exponent becomes its canonical spelling
    (an orjson.Fragment); integers stay Python ints (exact at any size)."""
    try:
        return _DECODER.decode(text)
    except Rejection:
        raise
    except ValueError as exc:
        if text.startswith("\ufeff"):
            raise Rejection(
                "invalid_json", "not JSON: it starts with a byte order mark (BOM); send it without"
            ) from None
        if "integer string conversion" not in str(exc):
            raise Rejection("invalid_json", f"not JSON: {exc}") from None
    except RecursionError:
        raise Rejection("invalid_json", "not JSON: nested too deep") from None
    # An integer of more than 4300 digits (Python's int conversion limit): keep it as text.
    try:
        return _BIG_INT_DECODER.decode(text)
    except Rejection:
        raise
    except (ValueError, RecursionError) as exc:
        raise Rejection("invalid_json", f"not JSON: {exc}") from None


# json.loads builds a decoder per call when given hooks; these are built once (a decoder keeps no state).
_DECODER = json.JSONDecoder(parse_float=_number, parse_constant=_reject_constant)
_BIG_INT_DECODER = json.JSONDecoder(parse_float=_number, parse_int=_number, parse_constant=_reject_constant)


def _schema_problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
