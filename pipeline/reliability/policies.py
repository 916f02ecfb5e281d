"""Per-sink reliability policies: how a sink retries and when its circuit breaker trips.

These are configuration only (validated pydantic models). The retry-tier topics are derived from the
retry policy so that `topics.yaml` and the agents agree on the tiers without a second list.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BackoffStrategy = Literal["exponential", "linear", "fixed", "fibonacci"]

# Retryable HTTP statuses: exact codes ("429") or whole classes ("5xx"). Request Timeout, Too Early, Too Many
# Requests and every server error are worth retrying; other 4xx are the request's fault (seed 001: "No retry on
# permanent errors (4xx except 429)").
DEFAULT_RETRYABLE_STATUS: tuple[str, ...] = ("408", "425", "429", "5xx")
# Retryable SQLSTATE prefixes: 08 connection exception, 40 transaction rollback (serialization failure,
# deadlock), 53 insufficient resources, 57 operator intervention (admin shutdown, cannot connect now),
# 58 system error (I/O). Data errors (22, 23, 42...) are the event's fault and go to the DLQ.
DEFAULT_RETRYABLE_SQLSTATES: tuple[str, ...] = ("08", "40", "53", "57", "58")

# An upper bound that catches a unit mistake (seconds given as milliseconds, an extra zero): one write may
# take up to an hour (the satcom profile uses 5 minutes).
MAX_TIMEOUT_MS = 3_600_000

_STATUS_ENTRY = re.compile(r"^(?:[1-5][0-9]{2}|[1-5]xx)$")
_SQLSTATE_ENTRY = re.compile(r"^[0-9A-Z]{2,5}$")


def _entries(value: Any, setting: str) -> Any:
    """A list from a comma-separated string (env vars: "408,429,5xx"); lists pass through, items as str."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        out: list[Any] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise ValueError(f"{setting}: entry {item!r} must be a string or an integer")
            out.append(str(item).strip())
        return out
    return value


class RetryPolicy(BaseModel):
    """Seeds' names: max_retries, initial_backoff_ms, max_backoff_ms, jitter_factor, timeout_ms."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, le=20, description="retries after the first attempt; 0 = straight to the DLQ")
    initial_backoff_ms: int = Field(1000, gt=0, description="delay before the first retry")
    max_backoff_ms: int = Field(60_000, gt=0, description="ceiling of the delay between retries")
    jitter_factor: float = Field(0.1, ge=0.0, le=1.0, description="random share added to each delay")
    timeout_ms: int = Field(30_000, gt=0, le=MAX_TIMEOUT_MS, description="time limit of one write to the sink")
    backoff_strategy: BackoffStrategy = "exponential"
    backoff_multiplier: float = Field(
        2.0, ge=1.0, le=10.0, description="growth factor of exponential backoff (seed 003's exponential_base)"
    )
    retry_tiers: list[str] | None = Field(
        None,
        description='explicit retry tier delays instead of the derived ones, e.g. "5s,1m,10m" '
        "(retry n uses tier n, the last tier repeats)",
    )
    retryable_status: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RETRYABLE_STATUS),
        description='HTTP statuses worth retrying: exact codes ("429") or classes ("5xx"); env: "408,429,5xx"',
    )
    retryable_sqlstates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_RETRYABLE_SQLSTATES),
        description='SQLSTATE prefixes worth retrying ("08" = any connection exception, "40001" exactly)',
    )

    @field_validator("retry_tiers", mode="before")
    @classmethod
    def _parse_tiers(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        entries = _entries(value, "retry_tiers")
        for entry in entries:
            parse_duration_ms(entry)
        if not entries:
            return None
        return entries

    @field_validator("retryable_status", mode="before")
    @classmethod
    def _parse_status(cls, value: Any) -> Any:
        entries = _entries(value, "retryable_status")
        if isinstance(entries, list):
            entries = [str(e).lower() for e in entries]
            for entry in entries:
                if not _STATUS_ENTRY.match(entry):
                    raise ValueError(
                        f"retryable_status: bad entry {entry!r}: use an HTTP status code (100-599, e.g. 429) "
                        'or a status class ("4xx", "5xx")'
                    )
        return entries

    @field_validator("retryable_sqlstates", mode="before")
    @classmethod
    def _parse_sqlstates(cls, value: Any) -> Any:
        entries = _entries(value, "retryable_sqlstates")
        if isinstance(entries, list):
            entries = [str(e).upper() for e in entries]
            for entry in entries:
                if not _SQLSTATE_ENTRY.match(entry):
                    raise ValueError(
                        f"retryable_sqlstates: bad entry {entry!r}: use a SQLSTATE class (2 characters, e.g. 08) "
                        "or a longer prefix up to a full 5-character code (e.g. 40001), letters and digits only"
                    )
        return entries

    @model_validator(mode="after")
    def _ceiling_not_below_start(self) -> RetryPolicy:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError(
                f"max_backoff_ms ({self.max_backoff_ms}) must be >= initial_backoff_ms ({self.initial_backoff_ms})"
            )
        return self

    def base_delay_ms(self, attempt: int) -> int:
        """Delay before retry number `attempt` (0-based), before jitter, capped at max_backoff_ms.

        Exponential: initial * backoff_multiplier**attempt (the default multiplier 2.0 gives the seeds'
        initial * 2^attempt). The result is always within [initial_backoff_ms, max_backoff_ms] and never
        decreases as `attempt` grows."""
        attempt = max(attempt, 0)
        initial = self.initial_backoff_ms
        raw: float
        if self.backoff_strategy == "exponential":
            multiplier = self.backoff_multiplier
            # Past the attempt that reaches the ceiling the power only grows (and may overflow a float).
            if multiplier > 1.0 and attempt > math.log(self.max_backoff_ms / initial) / math.log(multiplier) + 1:
                return self.max_backoff_ms
            # An integral multiplier keeps exact integer arithmetic (2.0 gives the same delays as before).
            raw = initial * int(multiplier) ** attempt if multiplier.is_integer() else initial * multiplier**attempt
        elif self.backoff_strategy == "linear":
            raw = initial * (attempt + 1)
        elif self.backoff_strategy == "fixed":
            raw = initial
        else:
            a, b = 1, 1
            for _ in range(attempt):
                if initial * a >= self.max_backoff_ms:
                    break
                a, b = b, a + b
            raw = initial * a
        return int(min(max(raw, initial), self.max_backoff_ms))

    def is_retryable_status(self, code: int) -> bool:
        """Whether an HTTP response status is worth retrying (exact code or its "Nxx" class is listed)."""
        exact = str(code)
        klass = f"{exact[0]}xx" if len(exact) == 3 else None
        return any(entry in (exact, klass) for entry in self.retryable_status)

    def is_retryable_sqlstate(self, sqlstate: str) -> bool:
        """Whether a PostgreSQL SQLSTATE starts with one of the retryable prefixes (case-insensitive)."""
        code = (sqlstate or "").strip().upper()
        return bool(code) and any(code.startswith(prefix) for prefix in self.retryable_sqlstates)

    def tier_delays_ms(self) -> tuple[int, ...]:
        """One retry tier per retry attempt, each with its base delay (tiers with equal delays merge),
        or the explicit `retry_tiers`."""
        if self.retry_tiers:
            return tuple(parse_duration_ms(entry) for entry in self.retry_tiers)
        delays: list[int] = []
        for attempt in range(self.max_retries):
            delay = self.base_delay_ms(attempt)
            if not delays or delays[-1] != delay:
                delays.append(delay)
        return tuple(delays)

    def tier_for_retry(self, retry_number: int) -> int:
        """Index of the tier that holds retry number `retry_number` (1-based)."""
        tiers = self.tier_delays_ms()
        if self.retry_tiers:
            return min(max(retry_number, 1), len(tiers)) - 1
        return tiers.index(self.base_delay_ms(retry_number - 1))


_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")


def parse_duration_ms(text: str) -> int:
    """'500ms', '5s', '10m', '2h' -> milliseconds (the inverse of tier_label)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"retry tier {text!r} is not a duration like 500ms, 5s, 10m or 2h")
    number, unit = int(match.group(1)), match.group(2)
    ms = number * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]
    if ms <= 0:
        raise ValueError(f"retry tier {text!r} must be longer than 0")
    return ms


class BreakerPolicy(BaseModel):
    """Seeds' names: failure_threshold, open_duration_sec, half_open_max_inflight (+ rate window)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    open_duration_sec: float = Field(60.0, gt=0, le=86_400, description="how long the breaker stays open (<= 1 day)")
    half_open_max_inflight: int = Field(2, ge=1, description="probes allowed through while half-open")
    success_threshold: int = Field(2, ge=1, description="probe successes that close the breaker")
    window_size: int = Field(100, ge=1, description="calls in the failure-rate window")
    minimum_requests: int = Field(10, ge=1, description="calls seen before the failure rate counts")
    failure_rate_threshold: float = Field(0.5, gt=0.0, le=1.0, description="failure share that opens it")


class QueuePolicy(BaseModel):
    """The seeds' store-and-forward queue. Kafka is the queue here: `max_bytes` becomes the sink
    topic's `retention.bytes` (per partition, as Kafka counts it); None keeps the topics.yaml value."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_bytes: int | None = Field(None, gt=0)
    flush_interval_ms: int = Field(2000, gt=0, le=MAX_TIMEOUT_MS)


def tier_label(delay_ms: int) -> str:
    """A short, stable topic-name label for a delay: 500ms, 1s, 90s, 5m, 2h."""
    if delay_ms % 3_600_000 == 0:
        return f"{delay_ms // 3_600_000}h"
    if delay_ms % 60_000 == 0:
        return f"{delay_ms // 60_000}m"
    if delay_ms % 1000 == 0:
        return f"{delay_ms // 1000}s"
    return f"{delay_ms}ms"
