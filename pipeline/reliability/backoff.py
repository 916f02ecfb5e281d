"""Backoff delays: the policy's base delay (exponential, linear, fixed or fibonacci, capped at
max_backoff_ms) plus jitter, as the seeds define it: delay = base + base * jitter_factor * random()."""

from __future__ import annotations

import random

from pipeline.reliability.policies import RetryPolicy


def delay_seconds(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    base = policy.base_delay_ms(attempt)
    jitter = base * policy.jitter_factor * (rng or random).random()
    return (base + jitter) / 1000.0
