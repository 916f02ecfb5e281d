"""Times for --since, --until and --before: RFC 3339 (with a UTC offset) or relative to now ("90s", "15m",
"2h", "3d", "1w" ago)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pipeline.dlq.errors import BadTime

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 604_800}
_RELATIVE = re.compile(r"^(\d+)(s|min|m|h|d|w)$")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime; BadTime (naming the accepted forms) otherwise."""
    raw = text.strip()
    match = _RELATIVE.match(raw.lower())
    if match:
        return (now or datetime.now(UTC)) - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadTime(
            f"cannot parse time {text!r}: use RFC 3339 (2026-11-22T10:00:00Z) or a duration ago (90s, 15m, 2h, 3d, 1w)"
        )
    if parsed.tzinfo is None:
        raise BadTime(f"time {text!r} has no UTC offset: add Z or +HH:MM (e.g. 2026-11-22T10:00:00Z)")
    return parsed.astimezone(UTC)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> str:
    """RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
