"""Per-sink reliability policies: how a sink retries and when its circuit breaker trips.

These are configuration only (validated pydantic models). The retry-tier topics are derived from the
retry policy so that `topics.yaml` and the agents agree on the tiers without a second list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackoffStrategy = Literal["exponential", "linear", "fixed", "fibonacci"]


class RetryPolicy(BaseModel):
    """Seeds' names: max_retries, initial_backoff_ms, max_backoff_ms, jitter_factor, timeout_ms."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, le=20, description="retries after the first attempt; 0 = straight to the DLQ")
    initial_backoff_ms: int = Field(1000, gt=0, description="delay before the first retry")
    max_backoff_ms: int = Field(60_000, gt=0, description="ceiling of the delay between retries")
    jitter_factor: float = Field(0.1, ge=0.0, le=1.0, description="random share added to each delay")
    timeout_ms: int = Field(30_000, gt=0, description="time limit of one write to the sink")
    backoff_strategy: BackoffStrategy = "exponential"

    @model_validator(mode="after")
    def _ceiling_not_below_start(self) -> RetryPolicy:
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError(
                f"max_backoff_ms ({self.max_backoff_ms}) must be >= initial_backoff_ms ({self.initial_backoff_ms})"
            )
        return self

    def base_delay_ms(self, attempt: int) -> int:
        """Delay before retry number `attempt` (0-based), before jitter, capped at max_backoff_ms."""
        initial = self.initial_backoff_ms
        if self.backoff_strategy == "exponential":
            raw = initial * (2**attempt)
        elif self.backoff_strategy == "linear":
            raw = initial * (attempt + 1)
        elif self.backoff_strategy == "fixed":
            raw = initial
        else:
            a, b = 1, 1
            for _ in range(attempt):
                a, b = b, a + b
            raw = initial * a
        return int(min(raw, self.max_backoff_ms))

    def tier_delays_ms(self) -> tuple[int, ...]:
        """One retry tier per retry attempt, each with its base delay (tiers with equal delays merge)."""
        delays: list[int] = []
        for attempt in range(self.max_retries):
            delay = self.base_delay_ms(attempt)
            if not delays or delays[-1] != delay:
                delays.append(delay)
        return tuple(delays)


class BreakerPolicy(BaseModel):
    """Seeds' names: failure_threshold, open_duration_sec, half_open_max_inflight (+ rate window)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    open_duration_sec: float = Field(60.0, gt=0, description="how long the breaker stays open")
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
    flush_interval_ms: int = Field(2000, gt=0)


def tier_label(delay_ms: int) -> str:
    """A short, stable topic-name label for a delay: 500ms, 1s, 90s, 5m, 2h."""
    if delay_ms % 3_600_000 == 0:
        return f"{delay_ms // 3_600_000}h"
    if delay_ms % 60_000 == 0:
        return f"{delay_ms // 60_000}m"
    if delay_ms % 1000 == 0:
        return f"{delay_ms // 1000}s"
    return f"{delay_ms}ms"
