"""The HTTP `Retry-After` header (RFC 9110 section 10.2.3): how long the sink asks us to wait.

Seed 001: the sinks "honor `Retry-After` header when present". The header is either delta-seconds ("120")
or an HTTP-date (IMF-fixdate, the obsolete RFC 850 form or asctime). The parser is lenient where a sink may be
sloppy (fractional seconds, surrounding spaces, bytes) and returns None for anything it cannot read, so a
broken header never turns a retryable failure into a crash.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]

_DELTA_SECONDS = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")


def parse_retry_after(
    value: str | bytes | None, *, now: datetime | None = None, max_seconds: float = 86_400
) -> float | None:
    """Seconds to wait from `now` (default: the current UTC time), clamped to [0, max_seconds].

    Returns None when the value is missing, empty or unreadable (including negative numbers). A date in the
    past gives 0.0. A naive `now` or a date without a zone (asctime) is taken as UTC. Never raises."""
    try:
        return _parse(value, now, max_seconds)
    except Exception:  # a header from the network must never break the delivery loop
        return None


def _parse(value: str | bytes | None, now: datetime | None, max_seconds: float) -> float | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    text = text.strip()
    if not text:
        return None
    ceiling = 0.0 if math.isnan(max_seconds) else max(0.0, float(max_seconds))
    if _DELTA_SECONDS.match(text):
        return min(float(text), ceiling)  # digits only: finite or +inf, never NaN
    if text[0] in "+-":
        return None  # a signed number ("-5", "+5"): delta-seconds has no sign
    when = parsedate_to_datetime(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    seconds = (when - reference).total_seconds()
    return min(max(seconds, 0.0), ceiling)
