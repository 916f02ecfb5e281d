"""Settings every sink has, whatever its type. Each sink type extends `SinkSettings` with its own fields."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from pipeline.reliability.policies import BreakerPolicy, QueuePolicy, RetryPolicy

# Events per write; a sink type may give its own default (`batch_size: BatchSize = 2000`).
BatchSize = Annotated[int, Field(ge=1, le=100_000, description="events per write")]


class SinkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    enabled: bool = False
    batch_size: BatchSize = 500
    linger_ms: int = Field(20, ge=0, le=600_000, description="how long a partial batch waits for more events")
    flush_bandwidth_bytes_per_sec: int | None = Field(
        None, ge=1, description="bandwidth limit of writes (live and retry together); none = unlimited"
    )
    max_events_per_sec: float | None = Field(None, gt=0, description="event rate limit of writes")
    max_concurrent_requests: int = Field(
        1,
        ge=1,
        le=64,
        description="writes to this sink in flight at once per worker (batch_size events each); while the "
        "breaker is half-open, at most circuit_breaker.half_open_max_inflight of them",
    )
    retry_preset: str | None = Field(None, description="conservative | aggressive | patient")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit_breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    queue: QueuePolicy = Field(default_factory=QueuePolicy)

    def require_runnable(self) -> None:
        """Raise ValueError naming the setting when an enabled sink lacks what it needs to run."""
