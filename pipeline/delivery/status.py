"""What one sink's delivery is doing, for health endpoints: whether the sink is open, why not, since
when, its breaker, and whether consumption is paused because a retry tier or the DLQ cannot be written.
Error texts are the sinks' own (which mask their secrets), truncated."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.reliability.breaker import CircuitBreaker

OpenState = Literal["opening", "open", "retrying", "failed", "stopped"]
MAX_ERROR_TEXT = 500


def short_text(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


@dataclass
class RunnerStatus:
    sink: str
    breaker: CircuitBreaker
    open_state: OpenState = "opening"
    last_open_error: str | None = None
    since: float = field(default_factory=time.time)  # epoch seconds of the last open_state change
    route_blocked_until: float | None = None  # epoch seconds; None while routing works
    last_route_error: str | None = None
    crashes: int = 0

    def set_open_state(self, state: OpenState, error: BaseException | None = None) -> None:
        if state != self.open_state:
            self.open_state = state
            self.since = time.time()
        self.last_open_error = short_text(error) if error is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "open_state": self.open_state,
            "last_open_error": self.last_open_error,
            "since": self.since,
            "breaker_state": self.breaker.state.value,
            "route_blocked_until": self.route_blocked_until,
            "last_route_error": self.last_route_error,
            "crashes": self.crashes,
        }
