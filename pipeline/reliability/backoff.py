"""Backoff delays: the policy's base delay (exponential, linear, fixed or fibonacci, capped at
max_backoff_ms) plus jitter, as the seeds define it: delay = base + base * jitter_factor * random()."""

from __future__ import annotations

import random

from pipeline.reliability.policies import RetryPolicy


def jittered_ms(base_ms: int, jitter_factor: float, rng: random.Random | None = None) -> int:
    return int(base_ms + base_ms * jitter_factor * (rng or random).random())


def delay_seconds(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    return jittered_ms(policy.base_delay_ms(attempt), policy.jitter_factor, rng) / 1000.0
