"""Where a failed event goes next, and the headers it carries there. Pure functions, no Kafka.

A retryable failure moves the event to the retry tier of its next attempt (tiers are the distinct base
delays of the sink's retry policy, in order); after `max_retries` failures, or at once on a fatal
error, it goes to the sink's DLQ with the full context and a truncated traceback. The error message and
the traceback pass the process's redactor (pipeline.redact) first.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pipeline import headers as h
from pipeline.redact import redact
from pipeline.reliability.backoff import jittered_ms
from pipeline.reliability.policies import RetryPolicy

TRACEBACK_LIMIT = 4000


@dataclass(frozen=True)
class Attempts:
    """What the headers of a record say about its earlier failures (attempt 0: never failed)."""

    attempt: int = 0
    first_failed_at: str | None = None

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]] | None) -> Attempts:
        raw = h.header_value(headers, h.ATTEMPT)
        try:
            attempt = max(0, int(raw)) if raw else 0
        except ValueError:
            attempt = 0
        return cls(attempt=attempt, first_failed_at=h.header_value(headers, h.FIRST_FAILED_AT))


@dataclass(frozen=True)
class Route:
    kind: Literal["retry", "dlq"]
    tier: int | None = None  # index into the sink's retry tiers
    due_ms: int | None = None
    reason: str | None = None  # for the DLQ: fatal | retries_exhausted


def tier_index(policy: RetryPolicy, retry_number: int) -> int:
    """The tier of retry number `retry_number` (1-based): the tier holding its base delay."""
    return policy.tier_for_retry(retry_number)


def route_failure(
    policy: RetryPolicy,
    attempts: Attempts,
    *,
    fatal: bool,
    now_ms: int,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> Route:
    failed = attempts.attempt + 1
    if fatal:
        return Route("dlq", reason="fatal")
    if failed > policy.max_retries:
        return Route("dlq", reason="retries_exhausted")
    tier = tier_index(policy, failed)
    delay: float = jittered_ms(policy.tier_delays_ms()[tier], policy.jitter_factor, rng)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s * 1000)
    return Route("retry", tier=tier, due_ms=now_ms + int(delay))


def failure_headers(
    original: list[tuple[str, bytes]] | None,
    *,
    sink: str,
    event_hash: str,
    topic: str,
    partition: int,
    offset: int,
    attempts: Attempts,
    error: BaseException,
    route: Route,
    now: datetime | None = None,
) -> list[tuple[str, bytes]]:
    stamp = (now or datetime.now(UTC)).isoformat()
    added: dict[str, object] = {
        h.SINK: sink,
        h.EVENT_HASH: event_hash,
        h.ATTEMPT: attempts.attempt + 1,
        h.FIRST_FAILED_AT: attempts.first_failed_at or stamp,
        h.FAILED_AT: stamp,
        h.ERROR_CLASS: type(error).__name__,
        h.ERROR_MESSAGE: redact(str(error)) or type(error).__name__,
        h.FAILED_TOPIC: topic,
        h.FAILED_PARTITION: partition,
        h.FAILED_OFFSET: offset,
    }
    if route.kind == "retry":
        added[h.DUE_MS] = route.due_ms
    else:
        added[h.ERROR_REASON] = route.reason
        added[h.ERROR_TRACEBACK] = format_traceback(error)
    kept = [(k, v) for k, v in (original or ()) if not (route.kind == "dlq" and k == h.DUE_MS)]
    return h.merge(kept, added)


def format_traceback(error: BaseException) -> str:
    """The traceback, redacted before it is cut (a cut could leave part of a secret unrecognised)."""
    text = redact("".join(traceback.format_exception(error)).strip())
    if len(text) > TRACEBACK_LIMIT:
        text = "..." + text[-(TRACEBACK_LIMIT - 3) :]
    return text
