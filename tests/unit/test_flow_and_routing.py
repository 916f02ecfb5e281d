from __future__ import annotations

import random

import pytest

from pipeline import headers as h
from pipeline.delivery.routing import Attempts, Route, failure_headers, route_failure, tier_index
from pipeline.reliability.policies import RetryPolicy
from pipeline.reliability.ratelimit import TokenBucket
from pipeline.sinks.base import FatalSinkError, SinkTimeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_long_run_rate_and_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    assert bucket.delay_for(500) == pytest.approx(0.5)  # starts empty
    clock.now += 0.5
    assert bucket.delay_for(3000) == pytest.approx(3.0)  # bigger than the capacity: debt
    clock.now += 3.0
    assert bucket.delay_for(0) == 0.0
    clock.now += 10  # idle time banks at most the capacity: one second of traffic
    assert bucket.delay_for(100) == 0.0
    assert bucket.delay_for(900) == 0.0
    assert bucket.delay_for(1000) == pytest.approx(1.0)


def test_tiers_follow_the_policy() -> None:
    policy = RetryPolicy(max_retries=6, initial_backoff_ms=1000, max_backoff_ms=8000)
    assert policy.tier_delays_ms() == (1000, 2000, 4000, 8000)
    assert [tier_index(policy, n) for n in range(1, 7)] == [0, 1, 2, 3, 3, 3]


def test_route_retry_then_dlq() -> None:
    policy = RetryPolicy(max_retries=2, initial_backoff_ms=1000, max_backoff_ms=8000, jitter_factor=0.5)
    rng = random.Random(1)
    first = route_failure(policy, Attempts(0), fatal=False, now_ms=10_000, rng=rng)
    assert first.kind == "retry" and first.tier == 0 and 11_000 <= (first.due_ms or 0) <= 11_500
    second = route_failure(policy, Attempts(1), fatal=False, now_ms=10_000, rng=rng)
    assert second.tier == 1 and 12_000 <= (second.due_ms or 0) <= 13_000
    assert route_failure(policy, Attempts(2), fatal=False, now_ms=0) == Route("dlq", reason="retries_exhausted")
    assert route_failure(policy, Attempts(0), fatal=True, now_ms=0) == Route("dlq", reason="fatal")
    later = route_failure(policy, Attempts(0), fatal=False, now_ms=0, retry_after_s=30, rng=rng)
    assert later.due_ms == 30_000


def test_failure_headers_carry_the_context() -> None:
    route = Route("retry", tier=0, due_ms=123)
    headers = dict(
        failure_headers(
            [("trace", b"t1"), (h.ORIGIN_TOPIC, b"events.ingest")],
            sink="tsdb",
            event_hash="abc",
            topic="sink.tsdb",
            partition=2,
            offset=40,
            attempts=Attempts(0),
            error=SinkTimeout("slow"),
            route=route,
        )
    )
    assert headers["trace"] == b"t1" and headers[h.ORIGIN_TOPIC] == b"events.ingest"
    assert headers[h.ATTEMPT] == b"1" and headers[h.DUE_MS] == b"123" and headers[h.ERROR_CLASS] == b"SinkTimeout"
    assert headers[h.FIRST_FAILED_AT] == headers[h.FAILED_AT]
    assert headers[h.FAILED_TOPIC] == b"sink.tsdb" and headers[h.FAILED_OFFSET] == b"40"
    again = dict(
        failure_headers(
            list(headers.items()),
            sink="tsdb",
            event_hash="abc",
            topic="sink.tsdb.retry.1s",
            partition=0,
            offset=7,
            attempts=Attempts.from_headers(list(headers.items())),
            error=_raised(FatalSinkError("bad value")),
            route=Route("dlq", reason="fatal"),
        )
    )
    assert again[h.ATTEMPT] == b"2" and again[h.FIRST_FAILED_AT] == headers[h.FIRST_FAILED_AT]
    assert h.DUE_MS not in again and again[h.ERROR_REASON] == b"fatal"
    assert b"FatalSinkError: bad value" in again[h.ERROR_TRACEBACK]


def _raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as exc:
        return exc


def test_explicit_retry_tiers() -> None:
    policy = RetryPolicy.model_validate({"max_retries": 5, "retry_tiers": "5s,1m,10m"})
    assert policy.tier_delays_ms() == (5_000, 60_000, 600_000)
    assert [tier_index(policy, n) for n in range(1, 6)] == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="retry tier '5x'"):
        RetryPolicy.model_validate({"retry_tiers": "5s,5x"})


def test_expiry_watch_counts_offsets_that_retention_deleted() -> None:
    from aiokafka import TopicPartition

    from pipeline.delivery.expiry import ExpiryWatch

    watch = ExpiryWatch("tsdb")
    tp = TopicPartition("sink.tsdb", 0)
    watch.read(tp, 0, 9)  # nothing known yet: no loss can be told
    watch.read(tp, 10, 19)
    assert watch.expired == 0
    watch.moved(tp, 15)  # a seek back (rewind, retry-tier hold) is not a loss either
    watch.read(tp, 15, 30)
    assert watch.expired == 0
    watch.read(tp, 40, 45)  # 31..39 are gone
    assert watch.expired == 9
    watch.moved(tp, None)  # revoked: the next owner starts from its committed offset
    watch.read(tp, 100, 101)
    assert watch.expired == 9
