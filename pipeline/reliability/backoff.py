"""Backoff delays: the policy's base delay (exponential, linear, fixed or fibonacci, capped at
max_backoff_ms) plus jitter, as the seeds define it: delay = base + base * jitter_factor * random()."""

from __future__ import annotations

import random

from pipeline.reliability.policies import RetryPolicy


def jittered_ms(base_ms: int, jitter_factor: float, rng: random.Random | None = None) -> int:
    return int(base_ms + base_ms * jitter_factor * (rng or random).random())


def delay_seconds(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    return jittered_ms(policy.base_delay_ms(attempt), policy.jitter_factor, rng) / 1000.0


class Backoff:
    """A growing wait for repeated failures of one thing (opening a sink, producing to a broken topic):
    the policy's base delay for attempt 0, 1, 2, ... capped at `cap_s`; `reset()` after a success."""

    def __init__(self, policy: RetryPolicy, *, cap_s: float) -> None:
        self.policy = policy
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        delay = min(self.cap_s, self.policy.base_delay_ms(min(self.failures, 30)) / 1000)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
