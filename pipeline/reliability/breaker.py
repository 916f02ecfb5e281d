"""A circuit breaker per sink per worker, for an asyncio delivery loop.

States and edges (seeds 000/001/003; gauge `mship_sink_circuit_state`: 0 closed, 1 open, 2 half-open):

    CLOSED    --failure_threshold consecutive failures, or failure rate over the window-->  OPEN
    OPEN      --open period over (open_duration_sec, or trip()'s for_seconds)------------>  HALF_OPEN
    HALF_OPEN --success_threshold probe successes---------------------------------------->  CLOSED
    HALF_OPEN --any probe failure (or trip())--------------------------------------------->  OPEN

Usage: `acquire()` hands out a `Permit` (or None when no request may go now); every permit is ended by
exactly one of `permit.success()`, `permit.failure()` (a retryable sink failure) or `permit.ignored()` (ended
without judging the sink: a poison event, a fatal data error, cancellation); `async with permit:` ends it as
ignored if the block ends without a verdict. While half-open at most `half_open_max_inflight` probes are out.
One permit is one request, so the failure-rate window counts requests. (The lower-level `allow_request()` and
`record_*()` calls do the same bookkeeping without the once-only guard.)

The record_* calls carry no token, so when a request admitted before the breaker opened (a "stale" request)
is still out while half-open, a result cannot be told apart from a probe's. The breaker frees the stale
requests' places first: its probe count is then never lower than the true number of probes out, so the
half-open cap holds whatever order the results come in. Results are judged by the state they arrive in (as
resilience4j does): in half-open any failure re-opens and any success counts toward closing; in open they
only end their request.

Admin overrides (maintenance windows, `POST /admin/breakers/{sink}/...`): `force(Forced.OPEN)` holds the
breaker open (nothing is let through) and `force(Forced.CLOSED)` holds it closed (everything is let through,
failures are not counted) until `reset()`, which also closes the breaker and forgets its failures. These
moves are reported to the transition hook like any other, with the admin's reason.

Single-threaded (asyncio): no locks. The clock is injected so tests can drive time.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Callable

import structlog

from pipeline.reliability.policies import BreakerPolicy

__all__ = ["LEGAL_TRANSITIONS", "BreakerState", "CircuitBreaker", "Forced", "Permit", "TransitionHook"]

log = structlog.get_logger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def metric_value(self) -> int:
        """The seeds' gauge value (mship_sink_circuit_state): 0 closed, 1 open, 2 half-open."""
        return _METRIC_VALUES[self]


class Forced(enum.Enum):
    """An admin override; its value is the gauge pipeline_breaker_forced."""

    NONE = 0
    OPEN = 1
    CLOSED = 2


_METRIC_VALUES: dict[BreakerState, int] = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}

LEGAL_TRANSITIONS: frozenset[tuple[BreakerState, BreakerState]] = frozenset(
    {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    }
)

TransitionHook = Callable[[str, BreakerState, BreakerState, str], None]
"""on_transition(name, old, new, reason)."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self.open_count: int = 0
        """Times the breaker opened (mship_sink_circuit_open_total)."""
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._consecutive_failures = 0
        self._window: deque[bool] = deque(maxlen=policy.window_size)  # True = failure
        self._window_failures = 0
        self._half_open_successes = 0
        self._probes = 0  # admitted in the current half-open period and not ended yet
        self._others = 0  # every other admitted request not ended yet (closed-era, or probes of a past period)
        self._waiters: set[asyncio.Future[None]] = set()
        self.forced = Forced.NONE

    # -- state -------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; reading it moves OPEN -> HALF_OPEN once the open period is over."""
        if self.forced is Forced.OPEN:
            return BreakerState.OPEN
        if self.forced is Forced.CLOSED:
            return BreakerState.CLOSED
        if not self.policy.enabled:
            return BreakerState.CLOSED
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            period = self._open_until - (self._opened_at if self._opened_at is not None else self._open_until)
            self._half_open_successes = 0  # no probes are out: none are admitted while OPEN
            self._move(BreakerState.HALF_OPEN, f"open period of {period:g}s is over")
        return self._state

    def seconds_until_half_open(self) -> float:
        """How long the breaker stays open from now; 0.0 unless OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    # -- requests ----------------------------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """A permit for one request, or None when none may go now (open, or every probe slot taken)."""
        return Permit(self) if self.allow_request() else None

    def available(self) -> bool:
        """Whether a request would be allowed now; reserves nothing."""
        return self._would_allow()

    def allow_request(self) -> bool:
        """Whether a request may go to the sink now. True reserves a place (a probe slot when half-open):
        end it with exactly one record_* call."""
        if self.forced is Forced.OPEN:
            return False
        if self.forced is Forced.CLOSED:
            self._others += 1
            return True
        if not self.policy.enabled:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            self._others += 1
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_max_inflight:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        if self.forced is not Forced.NONE:
            self._end()
            return
        if not self.policy.enabled:
            return
        state = self.state
        self._end()
        if state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._add_to_window(failed=False)
        elif state is BreakerState.HALF_OPEN:
            self._half_open_successes += 1
            if self._half_open_successes >= self.policy.success_threshold:
                self._close(f"{self._half_open_successes} probe(s) succeeded while half-open")

    def record_failure(self) -> None:
        """A retryable failure of the sink (timeout, connection error, 5xx, 429)."""
        if self.forced is not Forced.NONE:
            self._end()
            return
        if not self.policy.enabled:
            return
        state = self.state
        self._end()
        if state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._add_to_window(failed=True)
            reason = self._closed_trip_reason()
            if reason is not None:
                self._open(reason, self.policy.open_duration_sec)
        elif state is BreakerState.HALF_OPEN:
            self._open("a probe failed while half-open", self.policy.open_duration_sec)
        # OPEN: a request admitted before the breaker opened; the open period stays as it is.

    def record_ignored(self) -> None:
        """The request ended without saying anything about the sink: frees its place, counts nothing."""
        if not self.policy.enabled and self.forced is Forced.NONE:
            return
        self._end()

    def trip(self, reason: str, *, for_seconds: float | None = None) -> None:
        """Force the breaker open for `for_seconds` (default open_duration_sec), e.g. for a sink's
        Retry-After. If it is open already the open period is extended to at least that long, never
        shortened. No effect when the breaker is disabled or forced by an admin."""
        if not self.policy.enabled or self.forced is not Forced.NONE:
            return
        if for_seconds is None or math.isnan(for_seconds):
            duration = self.policy.open_duration_sec
        else:
            duration = max(0.0, for_seconds)
        if self.state is BreakerState.OPEN:
            until = self._clock() + duration
            if until > self._open_until:
                self._open_until = until
                log.debug("circuit breaker open period extended", sink=self.name, reason=reason, open_sec=duration)
                self._notify()
            return
        self._open(reason, duration)

    async def wait_until_allowed(self) -> None:
        """Sleep until a request would be allowed: at once when CLOSED; when OPEN until the open period is
        over; when HALF_OPEN until a probe slot is free. Reserves nothing: call allow_request() after it
        (another task may have taken the slot; then wait again)."""
        loop = asyncio.get_running_loop()
        while not self._would_allow():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            timeout = self.seconds_until_half_open() if self._state is BreakerState.OPEN else None
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    # -- admin ---------------------------------------------------------------------------------------

    def force(self, forced: Forced, reason: str) -> None:
        """Hold the breaker open or closed until reset() (Forced.NONE is reset())."""
        if forced is Forced.NONE:
            self.reset(reason)
            return
        old = self.state
        self.forced = forced
        if forced is Forced.OPEN and old is not BreakerState.OPEN:
            self.open_count += 1
        self._report(old, self.state, reason, always=False)

    def reset(self, reason: str) -> None:
        """End any override and close the breaker with its failure counts cleared."""
        old = self.state
        self.forced = Forced.NONE
        self._forget()
        self._state = BreakerState.CLOSED
        self._report(old, BreakerState.CLOSED, reason, always=False)

    def _report(self, old: BreakerState, new: BreakerState, reason: str, *, always: bool = True) -> None:
        self._notify()
        if (always or new is not old) and self._on_transition is not None:
            try:
                self._on_transition(self.name, old, new, reason)
            except Exception:  # a broken log/metric hook must not break delivery
                log.exception("circuit breaker transition hook failed", sink=self.name, old=old.value, new=new.value)

    # -- introspection -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        state = self.state
        calls = len(self._window)
        now = self._clock()
        return {
            "name": self.name,
            "enabled": self.policy.enabled,
            "state": state.value,
            "state_value": state.metric_value,
            "consecutive_failures": self._consecutive_failures,
            "window_size": calls,
            "window_capacity": self.policy.window_size,
            "window_failures": self._window_failures,
            "failure_rate": self._window_failures / calls if calls else 0.0,
            "inflight_probes": self._probes,
            "inflight": self._probes + self._others,
            "half_open_successes": self._half_open_successes,
            "opened_at_age_sec": None if self._opened_at is None else max(0.0, now - self._opened_at),
            "seconds_until_half_open": max(0.0, self._open_until - now) if state is BreakerState.OPEN else 0.0,
            "open_count": self.open_count,
            "forced": self.forced.name.lower(),
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # -- internals ---------------------------------------------------------------------------------

    def _would_allow(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_max_inflight

    def _end(self) -> None:
        """One admitted request ended. Stale requests' places are freed first (see the module doc)."""
        if self._others > 0:
            self._others -= 1
        elif self._probes > 0:
            self._probes -= 1
        # else: a record_* without allow_request(); nothing to free
        self._notify()

    def _add_to_window(self, *, failed: bool) -> None:
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._window_failures -= 1
        window.append(failed)
        if failed:
            self._window_failures += 1

    def _closed_trip_reason(self) -> str | None:
        policy = self.policy
        if self._consecutive_failures >= policy.failure_threshold:
            return f"{self._consecutive_failures} consecutive failures (failure_threshold={policy.failure_threshold})"
        calls = len(self._window)
        # A minimum above the window size could never be met: the full window is enough then.
        if calls >= min(policy.minimum_requests, policy.window_size) and calls:
            rate = self._window_failures / calls
            if rate >= policy.failure_rate_threshold:
                return (
                    f"{self._window_failures} of the last {calls} calls failed "
                    f"({rate:.0%} >= failure_rate_threshold {policy.failure_rate_threshold:.0%})"
                )
        return None

    def _open(self, reason: str, duration: float) -> None:
        now = self._clock()
        self._opened_at = now
        self._open_until = now + duration
        self.open_count += 1
        self._half_open_successes = 0
        self._others += self._probes  # probes still out belong to a period that is over
        self._probes = 0
        self._move(BreakerState.OPEN, reason)

    def _close(self, reason: str) -> None:
        self._forget()
        self._move(BreakerState.CLOSED, reason)

    def _forget(self) -> None:
        """Clear the open period and the failure counts (closing)."""
        self._opened_at = None
        self._open_until = 0.0
        self._consecutive_failures = 0
        self._window.clear()
        self._window_failures = 0
        self._half_open_successes = 0
        self._others += self._probes  # probes still out now count as ordinary requests
        self._probes = 0

    def _move(self, new: BreakerState, reason: str) -> None:
        old = self._state
        self._state = new
        self._report(old, new, reason)

    def _notify(self) -> None:
        """Wake every wait_until_allowed(); each checks again whether it may go."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Permit:
    """One admitted request: end it with exactly one of success(), failure() or ignored(); later calls
    do nothing. Used as an async context manager, a permit still open at the end of the block (an
    exception, a cancellation) is ended as ignored."""

    __slots__ = ("_breaker", "ended")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self.ended = False

    def _end(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        return True

    def success(self) -> None:
        if self._end():
            self._breaker.record_success()

    def failure(self) -> None:
        if self._end():
            self._breaker.record_failure()

    def ignored(self) -> None:
        if self._end():
            self._breaker.record_ignored()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ignored()
