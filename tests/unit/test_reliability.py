"""Reliability building blocks: backoff, Retry-After, the circuit breaker, presets/profiles, classification."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import ValidationError

from pipeline.config import ConfigError, load_settings
from pipeline.reliability.backoff import delay_seconds
from pipeline.reliability.breaker import LEGAL_TRANSITIONS, BreakerState, CircuitBreaker
from pipeline.reliability.policies import BreakerPolicy, QueuePolicy, RetryPolicy
from pipeline.reliability.presets import DEPLOYMENT_PROFILES, RETRY_PRESETS, preset_layer
from pipeline.reliability.retry_after import parse_retry_after

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# --------------------------------------------------------------------------------------------------
# Backoff


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    initial = draw(st.integers(1, 10**7))
    ceiling = initial + draw(st.integers(0, 10**8))
    return RetryPolicy(
        initial_backoff_ms=initial,
        max_backoff_ms=ceiling,
        backoff_strategy=draw(st.sampled_from(["exponential", "linear", "fixed", "fibonacci"])),
        backoff_multiplier=draw(st.floats(1.0, 10.0, allow_nan=False)),
        jitter_factor=draw(st.floats(0.0, 1.0, allow_nan=False)),
    )


@given(policy=retry_policies(), attempt=st.integers(0, 500))
def test_base_delay_within_bounds_and_non_decreasing(policy: RetryPolicy, attempt: int) -> None:
    delay = policy.base_delay_ms(attempt)
    assert isinstance(delay, int)
    assert policy.initial_backoff_ms <= delay <= policy.max_backoff_ms
    assert policy.base_delay_ms(attempt + 1) >= delay


@given(policy=retry_policies(), attempt=st.integers(0, 60), seed=st.integers(0, 2**32))
def test_delay_seconds_within_jitter_band(policy: RetryPolicy, attempt: int, seed: int) -> None:
    base = policy.base_delay_ms(attempt)
    delay = delay_seconds(policy, attempt, random.Random(seed))
    assert base / 1000 <= delay <= base * (1 + policy.jitter_factor) / 1000 * (1 + 1e-12)


def test_jitter_varies_and_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(jitter_factor=0.5)
    rng = random.Random(1234)
    delays = [delay_seconds(policy, 2, rng) for _ in range(50)]
    assert len(set(delays)) > 40  # jitter actually spreads the delays
    assert min(delays) >= 4.0 and max(delays) <= 6.0
    rng_again = random.Random(1234)
    assert delays == [delay_seconds(policy, 2, rng_again) for _ in range(50)]
    no_jitter = RetryPolicy(jitter_factor=0.0)
    assert {delay_seconds(no_jitter, 2, random.Random(s)) for s in range(10)} == {4.0}


def test_multiplier_is_respected() -> None:
    policy = RetryPolicy(initial_backoff_ms=100, max_backoff_ms=10**9, backoff_multiplier=3.0)
    assert [policy.base_delay_ms(a) for a in range(5)] == [100, 300, 900, 2700, 8100]
    aggressive = RetryPolicy(initial_backoff_ms=500, max_backoff_ms=8000, backoff_multiplier=1.5)
    assert [aggressive.base_delay_ms(a) for a in range(9)] == [500, 750, 1125, 1687, 2531, 3796, 5695, 8000, 8000]
    flat = RetryPolicy(initial_backoff_ms=700, max_backoff_ms=9000, backoff_multiplier=1.0)
    assert {flat.base_delay_ms(a) for a in range(50)} == {700}


@given(
    initial=st.integers(1, 10**6),
    multiplier=st.floats(1.0, 10.0, allow_nan=False),
    attempt=st.integers(0, 30),
)
def test_exponential_follows_the_multiplier_until_the_ceiling(initial: int, multiplier: float, attempt: int) -> None:
    policy = RetryPolicy(initial_backoff_ms=initial, max_backoff_ms=10**15, backoff_multiplier=multiplier)
    expected = min(initial * multiplier**attempt, 10**15)
    assert abs(policy.base_delay_ms(attempt) - expected) <= max(1.0, expected * 1e-9)


@given(initial=st.integers(1, 10**12), extra=st.integers(0, 10**12), attempt=st.integers(0, 300))
def test_default_multiplier_keeps_the_original_formula(initial: int, extra: int, attempt: int) -> None:
    policy = RetryPolicy(initial_backoff_ms=initial, max_backoff_ms=initial + extra)
    assert policy.backoff_multiplier == 2.0
    assert policy.base_delay_ms(attempt) == int(min(initial * 2**attempt, initial + extra))


def test_default_delays_and_tiers_unchanged() -> None:
    policy = RetryPolicy()
    assert [policy.base_delay_ms(a) for a in range(8)] == [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    assert policy.tier_delays_ms() == (1000, 2000, 4000)
    assert RetryPolicy(backoff_multiplier=2.5, max_backoff_ms=10**9).base_delay_ms(100_000) == 10**9
    fib = RetryPolicy(backoff_strategy="fibonacci", initial_backoff_ms=100, max_backoff_ms=1000)
    assert [fib.base_delay_ms(a) for a in range(8)] == [100, 100, 200, 300, 500, 800, 1000, 1000]
    assert fib.base_delay_ms(10**7) == 1000  # stops counting once the ceiling is reached


@pytest.mark.parametrize("multiplier", [0.5, 0.99, 10.5])
def test_multiplier_range(multiplier: float) -> None:
    with pytest.raises(ValidationError, match="backoff_multiplier"):
        RetryPolicy(backoff_multiplier=multiplier)


# --------------------------------------------------------------------------------------------------
# Retry-After

NOW = datetime(1994, 11, 6, 8, 49, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (".5", 0.5),
        (" 7 ", 7.0),
        (b"30", 30.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 37.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 37.0),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", 37.0),  # asctime (no zone: UTC)
        (b"Sun, 06 Nov 1994 08:51:00 GMT", 120.0),
        ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0),  # in the past
        ("Sun, 06 Nov 1994 09:49:00 +0100", 0.0),  # same instant in another zone
    ],
)
def test_retry_after_values(value: str | bytes, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        b"",
        "soon",
        "-5",
        "-0.5",
        "+5",
        "1e3",
        "NaN",
        "inf",
        "12abc",
        "1.2.3",
        "Mon, 99 Foo",
        b"\xff\xfe",
    ],
)
def test_retry_after_garbage_is_none(value: str | bytes | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_retry_after_clamping() -> None:
    assert parse_retry_after("100000") == 86_400.0
    assert parse_retry_after("100", max_seconds=10) == 10.0
    assert parse_retry_after("9" * 500) == 86_400.0
    assert parse_retry_after("Sun, 06 Nov 2094 08:49:37 GMT", now=NOW) == 86_400.0
    far = parse_retry_after("Sun, 06 Nov 2094 08:49:37 GMT", now=NOW, max_seconds=float("inf"))
    assert far is not None and far > 86_400 * 365
    assert parse_retry_after("5", max_seconds=-1) == 0.0
    assert isinstance(parse_retry_after("5", max_seconds=3), float)


def test_retry_after_default_now_and_naive_now() -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=100), usegmt=True)
    seconds = parse_retry_after(future)
    assert seconds is not None and 90 <= seconds <= 100
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW.replace(tzinfo=None)) == 37.0


@given(value=st.one_of(st.text(), st.binary(), st.none()), max_seconds=st.floats(allow_nan=True))
def test_retry_after_never_raises(value: str | bytes | None, max_seconds: float) -> None:
    result = parse_retry_after(value, max_seconds=max_seconds)
    assert result is None or 0.0 <= result <= max(0.0, max_seconds)


@given(seconds=st.integers(0, 10**9))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(min(seconds, 86_400))


@given(offset=st.integers(-(10**8), 10**8))
def test_retry_after_http_dates(offset: int) -> None:
    header = format_datetime(NOW + timedelta(seconds=offset), usegmt=True)
    assert parse_retry_after(header, now=NOW, max_seconds=10**9) == float(max(offset, 0))


# --------------------------------------------------------------------------------------------------
# Circuit breaker


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


Transition = tuple[str, BreakerState, BreakerState, str]


def make_breaker(
    clock: FakeClock | None = None, transitions: list[Transition] | None = None, **policy: Any
) -> CircuitBreaker:
    defaults: dict[str, Any] = {"failure_threshold": 3, "open_duration_sec": 60.0, "minimum_requests": 1000}
    defaults.update(policy)

    def hook(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        if transitions is not None:
            transitions.append((name, old, new, reason))

    return CircuitBreaker("tsdb", BreakerPolicy(**defaults), clock=clock or FakeClock(), on_transition=hook)


def fail(cb: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        assert cb.allow_request()
        cb.record_failure()


def succeed(cb: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        assert cb.allow_request()
        cb.record_success()


def test_metric_values() -> None:
    assert [s.metric_value for s in (CLOSED, OPEN, HALF_OPEN)] == [0, 1, 2]
    assert [s.value for s in (CLOSED, OPEN, HALF_OPEN)] == ["closed", "open", "half_open"]


def test_consecutive_failures_open_it() -> None:
    cb = make_breaker()
    fail(cb, 2)
    succeed(cb)  # a success resets the run
    fail(cb, 2)
    assert cb.state is CLOSED
    fail(cb)
    assert cb.state is OPEN
    assert cb.open_count == 1
    assert not cb.allow_request()
    assert cb.seconds_until_half_open() == 60.0


def test_failure_rate_opens_it_after_minimum_requests() -> None:
    transitions: list[Transition] = []
    cb = make_breaker(
        transitions=transitions, failure_threshold=100, window_size=10, minimum_requests=4, failure_rate_threshold=0.5
    )
    fail(cb)  # 1/1 = 100 %, but fewer calls than minimum_requests
    succeed(cb)
    fail(cb)
    assert cb.state is CLOSED
    succeed(cb)  # 2 of 4 = 50 % on a success: a success never opens it
    assert cb.state is CLOSED
    fail(cb)  # 3 of 5
    assert cb.state is OPEN
    assert "3 of the last 5 calls failed" in transitions[0][3]


def test_failure_rate_window_slides() -> None:
    cb = make_breaker(failure_threshold=100, window_size=4, minimum_requests=4, failure_rate_threshold=0.75)
    fail(cb, 2)
    succeed(cb, 4)  # the failures slide out of the window
    snap = cb.snapshot()
    assert snap["window_size"] == 4 and snap["window_failures"] == 0 and snap["failure_rate"] == 0.0
    fail(cb, 2)
    assert cb.state is CLOSED  # 2 of 4
    fail(cb)
    assert cb.state is OPEN  # 3 of 4


def test_minimum_requests_above_window_size_uses_the_full_window() -> None:
    cb = make_breaker(failure_threshold=100, window_size=4, minimum_requests=10, failure_rate_threshold=0.5)
    succeed(cb, 2)
    fail(cb, 2)
    assert cb.state is OPEN


def test_ignored_counts_nothing() -> None:
    transitions: list[Transition] = []
    cb = make_breaker(transitions=transitions)
    for _ in range(10):
        assert cb.allow_request()
        cb.record_ignored()
    fail(cb, 2)
    assert cb.allow_request()
    cb.record_ignored()  # does not reset the run either
    snap = cb.snapshot()
    assert snap["consecutive_failures"] == 2 and snap["window_size"] == 2 and snap["inflight"] == 0
    fail(cb)
    assert cb.state is OPEN
    before = cb.snapshot()
    cb.record_ignored()  # without a request, in OPEN: nothing happens
    assert cb.snapshot() == before
    assert [t[2] for t in transitions] == [OPEN]


def test_open_then_half_open_after_the_duration() -> None:
    clock = FakeClock()
    cb = make_breaker(clock=clock, open_duration_sec=30)
    fail(cb, 3)
    clock.advance(29.5)
    assert cb.state is OPEN
    assert cb.seconds_until_half_open() == pytest.approx(0.5)
    assert not cb.allow_request()
    clock.advance(0.5)
    assert cb.seconds_until_half_open() == 0.0
    assert cb.state is HALF_OPEN
    assert cb.snapshot()["opened_at_age_sec"] == pytest.approx(30.0)


def half_open_breaker(clock: FakeClock | None = None, **policy: Any) -> CircuitBreaker:
    clock = clock or FakeClock()
    cb = make_breaker(clock=clock, **policy)
    cb.trip("test")
    clock.advance(cb.policy.open_duration_sec)
    assert cb.state is HALF_OPEN
    return cb


def test_half_open_inflight_cap() -> None:
    cb = half_open_breaker(half_open_max_inflight=2, success_threshold=5)
    assert cb.allow_request()
    assert cb.allow_request()
    assert not cb.allow_request()
    assert cb.snapshot()["inflight_probes"] == 2
    cb.record_ignored()  # frees a slot, judges nothing
    assert cb.state is HALF_OPEN
    assert cb.allow_request()
    assert not cb.allow_request()
    cb.record_success()
    assert cb.allow_request()
    assert cb.snapshot()["half_open_successes"] == 1


def test_success_threshold_closes_and_resets() -> None:
    clock = FakeClock()
    cb = make_breaker(clock=clock, half_open_max_inflight=3, success_threshold=2)
    fail(cb, 3)
    clock.advance(60)
    assert cb.allow_request() and cb.allow_request() and cb.allow_request()
    cb.record_success()
    assert cb.state is HALF_OPEN
    cb.record_success()
    assert cb.state is CLOSED
    snap = cb.snapshot()
    assert snap["consecutive_failures"] == 0 and snap["window_size"] == 0 and snap["inflight_probes"] == 0
    assert snap["inflight"] == 1 and snap["opened_at_age_sec"] is None
    cb.record_failure()  # the third probe ends in CLOSED: an ordinary failure
    assert cb.state is CLOSED and cb.snapshot()["consecutive_failures"] == 1


def test_probe_failure_reopens_for_a_new_period() -> None:
    clock = FakeClock()
    cb = half_open_breaker(clock, half_open_max_inflight=2, success_threshold=2)
    assert cb.allow_request() and cb.allow_request()
    cb.record_success()
    clock.advance(1)
    cb.record_failure()
    assert cb.state is OPEN
    assert cb.open_count == 2
    assert cb.seconds_until_half_open() == 60.0
    assert cb.snapshot()["inflight_probes"] == 0
    clock.advance(60)
    assert cb.state is HALF_OPEN
    assert cb.snapshot()["half_open_successes"] == 0  # the earlier probe success does not carry over


def test_failures_while_open_do_not_extend_it() -> None:
    clock = FakeClock()
    cb = make_breaker(clock=clock)
    assert cb.allow_request() and cb.allow_request()  # two slow requests out
    fail(cb, 3)
    clock.advance(50)
    cb.record_failure()
    cb.record_success()
    assert cb.state is OPEN and cb.seconds_until_half_open() == pytest.approx(10)
    assert cb.open_count == 1 and cb.snapshot()["inflight"] == 0


def test_stale_requests_never_let_probes_exceed_the_cap() -> None:
    clock = FakeClock()
    cb = make_breaker(clock=clock, half_open_max_inflight=1, success_threshold=1)
    assert cb.allow_request()  # a request admitted while closed, still out when the breaker opens
    fail(cb, 3)
    clock.advance(60)
    assert cb.allow_request()  # the probe
    assert not cb.allow_request()
    cb.record_ignored()  # one of the two ended: the stale one's place is freed first
    assert not cb.allow_request()  # so the probe (which may still be out) keeps its slot
    cb.record_ignored()
    assert cb.allow_request()


def test_trip_for_seconds() -> None:
    clock = FakeClock()
    transitions: list[Transition] = []
    cb = make_breaker(clock=clock, transitions=transitions, open_duration_sec=60)
    cb.trip("Retry-After: 5", for_seconds=5)
    assert cb.state is OPEN and cb.seconds_until_half_open() == 5.0
    cb.trip("shorter", for_seconds=1)  # already open: never shortened
    assert cb.seconds_until_half_open() == 5.0
    cb.trip("longer", for_seconds=120)  # extended, without a new transition
    assert cb.seconds_until_half_open() == 120.0
    assert cb.open_count == 1
    clock.advance(120)
    assert cb.state is HALF_OPEN
    cb.trip("again")  # default duration, from half-open
    assert cb.state is OPEN and cb.seconds_until_half_open() == 60.0
    assert [(t[1], t[2]) for t in transitions] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    assert transitions[0][3] == "Retry-After: 5"
    cb2 = make_breaker(clock=clock)
    cb2.trip("zero", for_seconds=0)
    assert cb2.state is HALF_OPEN


def test_disabled_breaker_always_allows() -> None:
    transitions: list[Transition] = []
    cb = make_breaker(transitions=transitions, enabled=False, failure_threshold=1)
    fail(cb, 50)
    cb.trip("ignored", for_seconds=100)
    assert cb.state is CLOSED
    assert all(cb.allow_request() for _ in range(100))
    assert cb.seconds_until_half_open() == 0.0
    assert cb.open_count == 0 and transitions == []
    assert cb.snapshot()["enabled"] is False


def test_on_transition_sequence() -> None:
    clock = FakeClock()
    transitions: list[Transition] = []
    cb = make_breaker(clock=clock, transitions=transitions, success_threshold=2)
    fail(cb, 3)
    clock.advance(60)
    succeed(cb, 2)
    assert [(t[0], t[1], t[2]) for t in transitions] == [
        ("tsdb", CLOSED, OPEN),
        ("tsdb", OPEN, HALF_OPEN),
        ("tsdb", HALF_OPEN, CLOSED),
    ]
    assert "3 consecutive failures" in transitions[0][3]
    assert all(isinstance(t[3], str) and t[3] for t in transitions)


def test_a_failing_hook_does_not_break_the_breaker() -> None:
    def hook(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        raise RuntimeError("metrics down")

    cb = CircuitBreaker("x", BreakerPolicy(failure_threshold=1), clock=FakeClock(), on_transition=hook)
    fail(cb)
    assert cb.state is OPEN


def test_snapshot_fields() -> None:
    clock = FakeClock()
    cb = make_breaker(clock=clock, window_size=10)
    fail(cb, 1)
    succeed(cb, 1)
    snap = cb.snapshot()
    assert snap == {
        "name": "tsdb",
        "enabled": True,
        "state": "closed",
        "state_value": 0,
        "consecutive_failures": 0,
        "window_size": 2,
        "window_capacity": 10,
        "window_failures": 1,
        "failure_rate": 0.5,
        "inflight_probes": 0,
        "inflight": 0,
        "half_open_successes": 0,
        "opened_at_age_sec": None,
        "seconds_until_half_open": 0.0,
        "open_count": 0,
        "forced": "none",
    }
    fail(cb, 3)
    clock.advance(10)
    snap = cb.snapshot()
    assert snap["state"] == "open" and snap["state_value"] == 1 and snap["open_count"] == 1
    assert snap["opened_at_age_sec"] == 10.0 and snap["seconds_until_half_open"] == 50.0


def test_record_without_request_does_not_go_negative() -> None:
    cb = make_breaker()
    cb.record_success()
    cb.record_ignored()
    assert cb.snapshot()["inflight"] == 0
    cb.record_failure()
    assert cb.snapshot()["consecutive_failures"] == 1


# -- invariants under random sequences ---------------------------------------------------------------


@st.composite
def breaker_policies(draw: st.DrawFn) -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=draw(st.integers(1, 6)),
        open_duration_sec=draw(st.sampled_from([0.5, 1.0, 5.0])),
        half_open_max_inflight=draw(st.integers(1, 4)),
        success_threshold=draw(st.integers(1, 4)),
        window_size=draw(st.integers(1, 12)),
        minimum_requests=draw(st.integers(1, 15)),
        failure_rate_threshold=draw(st.sampled_from([0.1, 0.5, 0.75, 1.0])),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives a breaker with arbitrary interleavings of requests, results, time and trips.

    The machine knows which requests are really probes of the current half-open period (the breaker does
    not: record_* carry no token) and checks the breaker's cap against that truth."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cb: CircuitBreaker | None = None
        self.outstanding: list[int | None] = []  # half-open period a request was admitted in, None if closed
        self.period = 0
        self.last_state = CLOSED

    def hook(self, name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        assert (old, new) in LEGAL_TRANSITIONS, (old, new)
        assert old is self.last_state
        self.last_state = new
        if new is HALF_OPEN:
            self.period += 1

    @initialize(policy=breaker_policies())
    def setup(self, policy: BreakerPolicy) -> None:
        self.cb = CircuitBreaker("m", policy, clock=self.clock, on_transition=self.hook)

    @property
    def breaker(self) -> CircuitBreaker:
        assert self.cb is not None
        return self.cb

    @rule(count=st.integers(1, 3))
    def request(self, count: int) -> None:
        for _ in range(count):
            state = self.breaker.state
            allowed = self.breaker.allow_request()
            if state is OPEN:
                assert not allowed
            if state is CLOSED:
                assert allowed
            if allowed:
                self.outstanding.append(self.period if state is HALF_OPEN else None)

    @precondition(lambda self: bool(self.outstanding))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "ignored"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.outstanding) - 1))
        self.outstanding.pop(index)
        before = self.breaker.state
        count = self.breaker.open_count
        getattr(self.breaker, f"record_{outcome}")()
        if outcome == "ignored":
            assert self.breaker.state is before and self.breaker.open_count == count

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(for_seconds=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 2.0, 60.0])))
    def trip(self, for_seconds: float | None) -> None:
        self.breaker.trip("test", for_seconds=for_seconds)
        assert self.breaker.state is OPEN or for_seconds == 0.0

    @invariant()
    def probes_within_cap(self) -> None:
        if self.cb is None:
            return
        cb = self.breaker
        snap = cb.snapshot()
        probes = snap["inflight_probes"]
        assert isinstance(probes, int)
        assert 0 <= probes <= cb.policy.half_open_max_inflight
        assert snap["inflight"] == len(self.outstanding)
        if cb.state is HALF_OPEN:
            real_probes = sum(1 for p in self.outstanding if p == self.period)
            assert real_probes <= probes  # the breaker's count never under-states the probes really out
        else:
            assert probes == 0

    @invariant()
    def open_never_allows(self) -> None:
        if self.cb is None:
            return
        assert self.breaker.state is self.last_state
        if self.breaker.state is OPEN:
            assert self.breaker.seconds_until_half_open() > 0
            assert not self.breaker._would_allow()


BreakerMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBreakerMachine = BreakerMachine.TestCase


@given(
    policy=breaker_policies(),
    ops=st.lists(st.sampled_from(["allow", "success", "failure", "ignored", "tick", "trip"]), max_size=200),
)
@settings(deadline=None)
def test_random_sequences_keep_invariants(policy: BreakerPolicy, ops: list[str]) -> None:
    clock = FakeClock()
    seen: list[tuple[BreakerState, BreakerState]] = []
    cb = CircuitBreaker("r", policy, clock=clock, on_transition=lambda n, o, s, r: seen.append((o, s)))
    out = 0
    for op in ops:
        if op == "allow":
            state = cb.state
            ok = cb.allow_request()
            assert not (state is OPEN and ok)
            out += ok
        elif op in ("success", "failure", "ignored") and out:
            out -= 1
            getattr(cb, f"record_{op}")()
        elif op == "tick":
            clock.advance(0.5)
        elif op == "trip":
            cb.trip("t")
        probes = cb.snapshot()["inflight_probes"]
        assert isinstance(probes, int) and probes <= policy.half_open_max_inflight
    assert all(edge in LEGAL_TRANSITIONS for edge in seen)
    assert all(a[1] is b[0] for a, b in itertools.pairwise(seen))
    assert cb.open_count == sum(1 for _, new in seen if new is OPEN)


# -- waiting -----------------------------------------------------------------------------------------


async def test_wait_returns_at_once_when_closed() -> None:
    cb = make_breaker()
    await asyncio.wait_for(cb.wait_until_allowed(), 0.5)


async def test_wait_wakes_when_the_open_period_ends() -> None:
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return time.monotonic()

    cb = CircuitBreaker("w", BreakerPolicy(open_duration_sec=0.2, failure_threshold=1), clock=clock)
    fail(cb)
    started = time.monotonic()
    calls = 0
    await asyncio.wait_for(cb.wait_until_allowed(), 5.0)
    assert time.monotonic() - started >= 0.15
    assert cb.state is HALF_OPEN
    assert calls < 50  # slept, did not spin
    assert cb.allow_request()


async def test_wait_wakes_when_a_retry_after_trip_ends() -> None:
    cb = CircuitBreaker("w", BreakerPolicy(open_duration_sec=600))
    cb.trip("Retry-After", for_seconds=0.05)
    await asyncio.wait_for(cb.wait_until_allowed(), 5.0)
    assert cb.state is HALF_OPEN


async def test_wait_wakes_when_a_half_open_slot_frees() -> None:
    cb = half_open_breaker(half_open_max_inflight=1, success_threshold=3)
    assert cb.allow_request()
    waiter = asyncio.create_task(cb.wait_until_allowed())
    await asyncio.sleep(0.02)
    assert not waiter.done()
    cb.record_success()
    await asyncio.wait_for(waiter, 1.0)
    assert cb.allow_request()


async def test_wait_wakes_on_close_and_cancels_cleanly() -> None:
    cb = half_open_breaker(half_open_max_inflight=1, success_threshold=1)
    assert cb.allow_request()
    waiters = [asyncio.create_task(cb.wait_until_allowed()) for _ in range(3)]
    cancelled = asyncio.create_task(cb.wait_until_allowed())
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    cb.record_success()  # closes it: everyone may go
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert cb.state is CLOSED
    assert not cb._waiters


# --------------------------------------------------------------------------------------------------
# Presets and deployment profiles


def test_retry_presets_match_seed_003() -> None:
    expected = {  # name: (max_attempts, initial s, max s, base)
        "conservative": (3, 1.0, 16.0, 2.0),
        "aggressive": (5, 0.5, 8.0, 1.5),
        "patient": (4, 2.0, 60.0, 2.5),
    }
    assert set(RETRY_PRESETS) == set(expected)
    for name, (attempts, initial, ceiling, base) in expected.items():
        policy = RetryPolicy.model_validate(RETRY_PRESETS[name])
        assert policy.max_retries + 1 == attempts
        assert policy.initial_backoff_ms == initial * 1000
        assert policy.max_backoff_ms == ceiling * 1000
        assert policy.backoff_multiplier == base
        assert policy.backoff_strategy == "exponential"
    patient = RetryPolicy.model_validate(RETRY_PRESETS["patient"])
    assert patient.tier_delays_ms() == (2000, 5000, 12500)


def test_profiles_validate_and_match_seed_000() -> None:
    assert set(DEPLOYMENT_PROFILES) == {"satcom", "at-sea", "remote-edge", "multi-cloud"}
    for groups in DEPLOYMENT_PROFILES.values():
        RetryPolicy.model_validate(groups.get("retry", {}))
        BreakerPolicy.model_validate(groups.get("circuit_breaker", {}))
        QueuePolicy.model_validate(groups.get("queue", {}))
    satcom = DEPLOYMENT_PROFILES["satcom"]
    assert satcom["retry"] == {
        "timeout_ms": 300_000,
        "max_retries": 5,
        "initial_backoff_ms": 5_000,
        "max_backoff_ms": 900_000,
        "jitter_factor": 0.3,
    }
    assert satcom["circuit_breaker"] == {
        "failure_threshold": 3,
        "open_duration_sec": 1800.0,
        "half_open_max_inflight": 2,
    }
    assert satcom["queue"] == {"enabled": True, "max_bytes": 2_147_483_648}
    assert DEPLOYMENT_PROFILES["at-sea"]["queue"]["max_bytes"] == 5_368_709_120
    assert DEPLOYMENT_PROFILES["at-sea"]["circuit_breaker"]["open_duration_sec"] == 3600
    assert DEPLOYMENT_PROFILES["remote-edge"]["queue"]["max_bytes"] == 536_870_912
    assert DEPLOYMENT_PROFILES["multi-cloud"]["retry"] == {"timeout_ms": 60_000}


@pytest.mark.parametrize(
    ("preset", "profile"),
    list(itertools.product([None, *RETRY_PRESETS], [None, *DEPLOYMENT_PROFILES])),
)
def test_every_combination_validates(preset: str | None, profile: str | None) -> None:
    layer = preset_layer(preset, profile)
    assert set(layer) == {"retry", "circuit_breaker", "queue"}
    RetryPolicy.model_validate(layer["retry"])
    BreakerPolicy.model_validate(layer["circuit_breaker"])
    QueuePolicy.model_validate(layer["queue"])


def test_preset_goes_on_top_of_the_profile() -> None:
    layer = preset_layer("aggressive", "satcom")
    assert layer["retry"]["initial_backoff_ms"] == 500  # preset
    assert layer["retry"]["max_retries"] == 4  # preset
    assert layer["retry"]["timeout_ms"] == 300_000  # profile, untouched by the preset
    assert layer["retry"]["jitter_factor"] == 0.3  # profile: presets set no jitter
    assert layer["circuit_breaker"]["open_duration_sec"] == 1800.0
    assert preset_layer(None, None) == {"retry": {}, "circuit_breaker": {}, "queue": {}}
    assert preset_layer("PATIENT", "AT_SEA") == preset_layer("patient", "at-sea")
    assert preset_layer("", "  ") == preset_layer(None, None)


def test_preset_layer_returns_a_copy() -> None:
    layer = preset_layer("conservative", "satcom")
    layer["retry"]["max_retries"] = 99
    layer["queue"]["max_bytes"] = 1
    assert RETRY_PRESETS["conservative"]["max_retries"] == 2
    assert DEPLOYMENT_PROFILES["satcom"]["queue"]["max_bytes"] == 2_147_483_648


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match=r"unknown retry preset 'speedy'.*aggressive, conservative, patient"):
        preset_layer("speedy", None)
    with pytest.raises(
        ValueError, match=r"unknown deployment profile 'mars'.*at-sea, multi-cloud, remote-edge, satcom"
    ):
        preset_layer(None, "mars")


# --------------------------------------------------------------------------------------------------
# Retryable classification


def test_default_status_classification() -> None:
    policy = RetryPolicy()
    assert policy.retryable_status == ["408", "425", "429", "5xx"]
    for code in (408, 425, 429, 500, 502, 503, 504, 599):
        assert policy.is_retryable_status(code), code
    for code in (200, 204, 301, 400, 401, 403, 404, 409, 413, 422):
        assert not policy.is_retryable_status(code), code


def test_default_sqlstate_classification() -> None:
    policy = RetryPolicy()
    for state in ("08006", "08001", "40001", "40P01", "53300", "57P01", "57p03", "58030"):
        assert policy.is_retryable_sqlstate(state), state
    for state in ("23505", "22P02", "42P01", "42703", "XX000", "", "  "):
        assert not policy.is_retryable_sqlstate(state), state


def test_lists_from_env_style_strings() -> None:
    policy = RetryPolicy.model_validate({"retryable_status": " 408, 429 ,5XX,", "retryable_sqlstates": "08, 40001"})
    assert policy.retryable_status == ["408", "429", "5xx"]
    assert policy.retryable_sqlstates == ["08", "40001"]
    assert policy.is_retryable_sqlstate("40001") and not policy.is_retryable_sqlstate("40P01")
    assert not policy.is_retryable_status(425)
    assert RetryPolicy.model_validate({"retryable_status": [429, "4xx"]}).retryable_status == ["429", "4xx"]
    assert RetryPolicy.model_validate({"retryable_status": ""}).retryable_status == []
    assert not RetryPolicy(retryable_status=[]).is_retryable_status(503)


@pytest.mark.parametrize(
    ("field", "value", "bad"),
    [
        ("retryable_status", "429,600", "'600'"),
        ("retryable_status", "abc", "'abc'"),
        ("retryable_status", "5x", "'5x'"),
        ("retryable_status", "6xx", "'6xx'"),
        ("retryable_status", ["429", "42"], "'42'"),
        ("retryable_status", [429, 1.5], "1.5"),
        ("retryable_sqlstates", "08,0", "'0'"),
        ("retryable_sqlstates", "08-1", "'08-1'"),
        ("retryable_sqlstates", "TOOLONG", "'TOOLONG'"),
    ],
)
def test_bad_entries_are_named(field: str, value: object, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.model_validate({field: value})
    assert field in str(info.value) and bad in str(info.value)


def test_lists_through_the_config_loader() -> None:
    settings_ = load_settings(environ={"TSDB_RETRYABLE_STATUS": "429,503", "TSDB_BACKOFF_MULTIPLIER": "1.5"})
    retry = settings_.sinks["tsdb"].retry
    assert retry.retryable_status == ["429", "503"] and retry.backoff_multiplier == 1.5
    with pytest.raises(ConfigError, match="'5xy'"):
        load_settings(environ={"TSDB_RETRYABLE_STATUS": "429,5xy"})


@given(code=st.integers(100, 599))
def test_status_classes_cover_their_codes(code: int) -> None:
    policy = RetryPolicy(retryable_status=[f"{code // 100}xx"])
    assert policy.is_retryable_status(code)
    assert not policy.is_retryable_status(code + 100 if code < 500 else code - 100)


@given(entries=st.lists(st.sampled_from(["408", "429", "5xx", "4xx", "503"]), max_size=5))
def test_string_and_list_forms_agree(entries: list[str]) -> None:
    assert (
        RetryPolicy.model_validate({"retryable_status": ",".join(entries)}).retryable_status
        == RetryPolicy.model_validate({"retryable_status": entries}).retryable_status
    )
