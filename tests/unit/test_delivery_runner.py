"""The delivery runner driven by a fake consumer, sink and producer (tests/unit/delivery_fakes.py): no
commit passes an event that is not done, whatever call fails; undecodable records go to the DLQ; an
unwritable DLQ pauses the sink without writing good events again; breaker permits per request."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from pipeline import headers as h
from pipeline.config import ConfigError, KafkaSettings, load_settings
from pipeline.delivery.consumer import ROUTE_ATTEMPTS, check_poll_interval, max_poll_interval_ms, round_budget_s
from pipeline.delivery.runner import _Listener
from pipeline.delivery.supervisor import RunnerCrashLoop, supervise
from pipeline.observability.metrics import REGISTRY
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.reliability.policies import BreakerPolicy
from pipeline.sinks.base import FatalSinkError, RetryableSinkError
from tests.support import run_cli
from tests.unit.delivery_fakes import FAULTS, Faults, all_done, drive, errors, event, fill, rig


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Captured, not rendered (rendering tracebacks with locals makes the property test slow)."""
    with capture_logs() as logs:
        yield logs


# -- the promise under random faults -----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0.02, 0.4),
    count=st.integers(1, 40),
    poison=st.frozensets(st.integers(0, 39), max_size=6),
    concurrency=st.integers(1, 3),
)
def test_no_commit_ever_passes_an_event_not_done(
    seed: int, rate: float, count: int, poison: frozenset[int], concurrency: int
) -> None:
    """Faults at every call of the consumer, the sink and the producer; the fake consumer checks every
    commit. Once the faults stop, everything is delivered: written, or in the DLQ."""
    rng = random.Random(seed)
    on = [True]

    def faulty(kinds: dict[str, list[BaseException]]) -> Faults:
        inner = errors(kinds, rng, rate)
        return lambda call: inner(call) if on[0] else None

    r = rig(
        sink_faults=faulty(FAULTS),
        consumer_faults=faulty(FAULTS),
        producer_faults=faulty(FAULTS),
        rng=random.Random(seed),
        max_concurrent_requests=concurrency,
    )
    fill(r, count, poison=poison)

    async def scenario() -> None:
        await drive(r, 80)
        on[0] = False
        await drive(r, 400, until=lambda: all_done(r))

    asyncio.run(scenario())
    assert all_done(r), f"not everything delivered: commits {r.consumer.commits}"
    main = [rec for tp, recs in r.log.records.items() if tp.topic == r.main for rec in recs]
    for record in main:
        assert r.done(TopicPartition(r.main, record.partition), record)
    dead = {(rec.key or b"").decode() for rec in r.in_dlq()}
    written = set(r.sink.written)
    for n in range(count):
        key = event(n, n in poison)[0].decode()
        if n in poison:
            assert key in dead and key not in written, f"poison event {n}"
        else:
            assert key in written or key in dead, f"event {n} neither written nor dead-lettered"


# -- item 4: an exception between fetch and routing rewinds the round ---------------------------------


async def test_a_record_whose_key_is_not_utf8_goes_to_the_dlq_and_the_partition_moves_on() -> None:
    r = rig(partitions=1)
    tp = TopicPartition(r.main, 0)
    key, body = event(0)
    r.log.append(tp, key, body, [])
    r.log.append(tp, b"\xff\xfe not utf-8", body, [])
    key2, body2 = event(2)
    r.log.append(tp, key2, body2, [])
    await drive(r, 5, until=lambda: all_done(r))
    assert r.consumer.commits[tp] == 3
    assert sorted(r.sink.written) == sorted([key.decode(), key2.decode()])
    (dead,) = r.in_dlq()
    assert dict(dead.headers)[h.ERROR_REASON] == b"undecodable"
    assert b"not UTF-8" in dict(dead.headers)[h.ERROR_MESSAGE]


async def test_a_fetch_error_on_the_second_poll_of_a_round_rewinds_the_first() -> None:
    calls = Counter[str]()

    def second_fetch_fails(call: str) -> BaseException | None:
        calls[call] += 1
        return KafkaError("fetch failed") if call == "getmany" and calls[call] == 2 else None

    r = rig(partitions=1, consumer_faults=second_fetch_fails, batch_size=3, linger_ms=1000)
    fill(r, 2, partitions=1)
    tp = TopicPartition(r.main, 0)

    await r.runner.step()  # the first poll returns 2 records, the second raises: nothing may be committed
    assert calls["getmany"] == 2
    assert r.consumer.commits.get(tp) is None and r.sink.written == []
    assert r.consumer.positions[tp] == 0, "the fetched records are put back"
    r.log.append(tp, *event(5), [])
    await drive(r, 5, until=lambda: all_done(r))
    assert r.consumer.commits[tp] == 3 and len(set(r.sink.written)) == 3


def counting(calls: Counter[str]) -> Faults:
    def count(call: str) -> BaseException | None:
        calls[call] += 1
        return None

    return count


async def test_the_linger_counts_from_the_oldest_fetched_event() -> None:
    """Events that waited a linger already (they arrived while the round before was writing) are written at
    once; events younger than the linger wait only what is left of it, and never more than the linger. (The
    fake consumer's poll for more returns at once and moves the fake clock by its timeout: the wait.)"""
    calls = Counter[str]()
    r = rig(partitions=1, consumer_faults=counting(calls), batch_size=10, linger_ms=400)
    tp = TopicPartition(r.main, 0)

    async def round_wait() -> float:
        before = r.clock.now
        await r.runner.step()
        return r.clock.now - before

    fill(r, 2, partitions=1)
    r.clock.now += 1.0  # waited longer than the linger
    assert await round_wait() == 0.0
    assert len(r.sink.written) == 2 and calls["getmany"] == 1, "a round of old events polled for more"

    r.log.append(tp, *event(2), [])
    r.clock.now += 0.25  # 150 ms of the linger left
    assert await round_wait() == pytest.approx(0.15, abs=0.01)
    assert len(r.sink.written) == 3

    r.log.append(tp, *event(3), [])
    r.clock.now -= 60.0  # the producer's clock a minute ahead of this host's: the whole linger, no more
    assert await round_wait() == pytest.approx(0.4, abs=0.01)
    assert len(r.sink.written) == 4


async def test_a_bug_in_the_sink_or_the_commit_does_not_skip_events() -> None:
    calls = Counter[str]()

    def faults(call: str) -> BaseException | None:
        calls[call] += 1
        return RuntimeError(f"bug in {call}") if calls[call] == 1 and call in ("commit", "write") else None

    r = rig(partitions=1, sink_faults=faults, consumer_faults=faults)
    fill(r, 4, partitions=1)
    await drive(r, 50, until=lambda: all_done(r))
    assert all_done(r) and len(set(r.sink.written)) == 4


# -- item 5: an unwritable retry tier or DLQ --------------------------------------------------------


async def test_an_unwritable_dlq_pauses_the_sink_and_never_writes_a_good_event_twice() -> None:
    broken = [True]

    def dlq_deleted(call: str) -> BaseException | None:
        return KafkaError("UnknownTopicOrPartitionError") if call == "send" and broken[0] else None

    r = rig(partitions=1, producer_faults=dlq_deleted, batch_size=10)
    fill(r, 10, poison=frozenset({3, 7}), partitions=1)
    tp = TopicPartition(r.main, 0)
    await drive(r, 5, until=lambda: r.runner.status.route_blocked_until is not None)
    assert r.runner.pausing.sink_paused(r.clock()), "consumption is paused with a backoff"
    await drive(r, 30)  # several backoff periods: each routes the two poison events again, nothing else
    assert r.consumer.commits.get(tp) == 3, "committed up to the first poison event, not past it"
    assert r.runner.status.route_blocked_until is not None
    writes = Counter(r.sink.written)
    assert len(writes) == 8 and set(writes.values()) == {1}, "each good event written once"
    broken[0] = False
    r.clock.now += 10
    await drive(r, 30, until=lambda: all_done(r))
    assert all_done(r)
    assert len(r.in_dlq()) == 2
    assert set(Counter(r.sink.written).values()) == {1}, "the good events were not written again"
    assert r.runner.status.route_blocked_until is None


async def test_route_backoff_grows_and_the_error_is_logged_once_per_period(
    quiet_logs: list[MutableMapping[str, Any]],
) -> None:
    sends = Counter[str]()

    def denied(call: str) -> BaseException | None:
        sends[call] += 1
        return KafkaError("TopicAuthorizationFailedError") if call == "send" else None

    r = rig(partitions=1, producer_faults=denied)
    fill(r, 1, poison=frozenset({0}), partitions=1)
    blocked = REGISTRY.get_sample_value("pipeline_sink_route_blocked_total", {"sink": "fake"}) or 0.0
    periods: list[float] = []
    for _ in range(5):
        await drive(r, 1)  # routes (bounded attempts), fails, pauses the sink
        until = r.runner.pausing.sink_until
        periods.append(round(until - r.clock(), 6))
        attempts = sends["send"]
        while r.clock() < until:  # the rounds of the pause only poll: no write, no produce
            await drive(r, 1)
        assert sends["send"] == attempts
    assert periods == [0.1, 0.2, 0.4, 0.4, 0.4], "grows up to max_backoff_ms"
    assert sends["send"] == 5 * ROUTE_ATTEMPTS
    logged = [e for e in quiet_logs if e["log_level"] == "error" and "cannot be written" in str(e["event"])]
    assert len(logged) == 5, "one error per backoff period"
    after = REGISTRY.get_sample_value("pipeline_sink_route_blocked_total", {"sink": "fake"})
    assert after == blocked + 5
    assert r.sink.written == [] and r.consumer.commits == {}


# -- item 13: half-open probes, requests in the window, fatal open ------------------------------------


async def test_half_open_sends_up_to_half_open_max_inflight_probes() -> None:
    r = rig(
        partitions=1,
        batch_size=2,
        sink_delay=0.01,
        circuit_breaker={"failure_threshold": 1, "open_duration_sec": 1, "half_open_max_inflight": 3},
        max_concurrent_requests=5,
    )
    fill(r, 20, partitions=1)
    r.runner.breaker.trip("test")
    r.clock.now += 2
    assert r.runner.breaker.state is BreakerState.HALF_OPEN
    await r.runner.step()
    assert r.sink.max_in_flight == 3 and len(r.sink.written) == 6


async def test_an_idle_half_open_breaker_is_closed_by_the_sinks_own_health_check() -> None:
    """With no events to try, a sink that is back would stay half-open (the worker "severe") until the next
    event; a sink whose health check asks the sink itself is asked instead, one probe per idle round."""
    r = rig(partitions=1, circuit_breaker={"failure_threshold": 1, "open_duration_sec": 1, "success_threshold": 2})
    breaker = r.runner.breaker

    def state() -> BreakerState:
        return breaker.state

    breaker.trip("test")
    r.clock.now += 2
    await r.runner.step()
    assert state() is BreakerState.HALF_OPEN  # this sink's health() does not ask the sink: no probe
    answers = [False, True, True]

    async def health() -> dict[str, Any]:
        return {"sink": "fake", "ok": answers.pop(0)}

    r.sink.health_probes_sink = True
    r.sink.health = health  # type: ignore[method-assign]
    await r.runner.step()
    assert state() is BreakerState.OPEN  # a failed check is a failed probe
    r.clock.now += 2
    await r.runner.step()
    assert state() is BreakerState.HALF_OPEN  # one success of the two it needs
    await r.runner.step()
    assert state() is BreakerState.CLOSED and answers == []
    await r.runner.step()  # closed: no more checks
    assert r.sink.written == []


async def test_the_failure_rate_window_counts_requests_not_rounds() -> None:
    r = rig(
        partitions=1,
        batch_size=2,
        max_concurrent_requests=4,
        sink_faults=lambda call: RetryableSinkError("503") if call == "write" else None,
        circuit_breaker={"failure_threshold": 100, "minimum_requests": 100},
    )
    fill(r, 8, partitions=1)
    await r.runner.step()
    snapshot = r.runner.breaker.snapshot()
    assert snapshot["window_size"] == 4 and snapshot["window_failures"] == 4 and snapshot["inflight"] == 0


async def test_a_fatal_open_error_is_an_error_with_backoff_and_a_status(
    quiet_logs: list[MutableMapping[str, Any]],
) -> None:
    r = rig()
    fatal_before = REGISTRY.get_sample_value("pipeline_sink_open_failures_total", {"sink": "fake", "kind": "fatal"})
    r.sink.open_errors = [
        FatalSinkError("permission denied for schema public"),
        FatalSinkError("permission denied for schema public"),
        RetryableSinkError("connection refused"),
    ]
    seen: list[tuple[str, str | None]] = []
    original = r.clock.sleep

    async def sleep(seconds: float) -> None:
        seen.append((r.runner.status.open_state, r.runner.status.last_open_error))
        await original(seconds)

    r.runner.sleep = sleep
    before = r.clock()
    await r.runner.open_sink()
    assert seen[0] == ("failed", "permission denied for schema public")
    assert seen[2][0] == "retrying"
    assert r.clock() - before >= 0.1 + 0.2 + 0.4 - 1e-9, "the waits grow"
    snapshot = r.runner.status.snapshot()
    assert snapshot["open_state"] == "open" and snapshot["last_open_error"] is None
    assert snapshot["breaker_state"] == "closed"
    levels = [e["log_level"] for e in quiet_logs if e["event"] == "sink open failed"]
    assert levels == ["error", "error", "warning"]
    fatal = REGISTRY.get_sample_value("pipeline_sink_open_failures_total", {"sink": "fake", "kind": "fatal"})
    assert (fatal or 0) - (fatal_before or 0) == 2


def test_poll_interval_covers_the_satcom_write_timeout() -> None:
    settings_ = load_settings(environ={"DEPLOYMENT_PROFILE": "satcom", "TSDB_ENABLED": "true"})
    sink = settings_.sinks["tsdb"]
    assert sink.retry.timeout_ms == 300_000
    interval = max_poll_interval_ms(sink)
    assert interval > round_budget_s(sink) * 1000 >= 2 * 300_000
    assert check_poll_interval(sink, settings_.kafka) == interval
    with pytest.raises(ConfigError, match="session_timeout_ms"):
        check_poll_interval(sink, KafkaSettings(session_timeout_ms=interval + 1))


def test_the_worker_refuses_a_session_timeout_above_the_poll_interval() -> None:
    env = {"TSDB_DSN": "postgresql://u:p@h/d", "PIPELINE_CONFIG": "", "KAFKA_SESSION_TIMEOUT_MS": "400000"}
    result = run_cli("worker", env=env)
    assert result.returncode == 78, result.stderr
    assert "kafka.session_timeout_ms" in result.stderr and "max.poll.interval.ms" in result.stderr


def test_a_permit_ends_once() -> None:
    breaker = CircuitBreaker("x", BreakerPolicy(failure_threshold=2))
    permit = breaker.acquire()
    assert permit is not None
    permit.failure()
    permit.failure()  # ignored: one verdict per permit
    assert breaker.snapshot()["consecutive_failures"] == 1 and breaker.snapshot()["inflight"] == 0


# -- supervisor --------------------------------------------------------------------------------------


async def test_a_runner_that_keeps_crashing_stops_the_worker() -> None:
    runs = 0

    async def crashing() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("a bug")

    async def no_sleep(_: float) -> None:
        pass

    with pytest.raises(RunnerCrashLoop, match="crashed 3 times"):
        await supervise("fake", crashing, max_crashes=3, window_s=60, sleep=no_sleep)
    assert runs == 3


async def test_crashes_spread_out_in_time_are_restarted() -> None:
    now = [0.0]
    runs = 0

    async def sometimes() -> None:
        nonlocal runs
        runs += 1
        now[0] += 100
        if runs < 6:
            raise RuntimeError("a rare bug")

    async def no_sleep(_: float) -> None:
        pass

    await supervise("fake", sometimes, max_crashes=3, window_s=150, clock=lambda: now[0], sleep=no_sleep)
    assert runs == 6


async def test_the_next_round_fetches_and_writes_while_a_commit_is_in_flight_and_a_revocation_waits_for_it() -> None:
    r = rig(partitions=1, batch_size=2)
    tp = TopicPartition(r.main, 0)
    fill(r, 2, partitions=1)
    answer = asyncio.Event()
    sent: list[dict[TopicPartition, int]] = []
    commit = r.consumer.commit

    async def slow_commit(offsets: Any) -> None:
        sent.append(dict(offsets))
        await answer.wait()
        await commit(offsets)

    r.consumer.commit = slow_commit  # type: ignore[method-assign]
    await asyncio.wait_for(r.runner.step(), 5)  # written; its commit goes out and is not answered
    await asyncio.sleep(0)
    assert sent == [{tp: 2}] and r.consumer.commits.get(tp) is None and len(r.sink.written) == 2
    r.log.append(tp, *event(7), [])
    r.log.append(tp, *event(8), [])
    round_two = asyncio.create_task(r.runner.step())
    for _ in range(100):  # the second round writes while the first commit waits for its answer
        if len(r.sink.written) == 4:
            break
        await asyncio.sleep(0)
    assert len(r.sink.written) == 4 and sent == [{tp: 2}], "the next round waited for the commit"
    assert not round_two.done(), "a second commit went out before the first was answered"
    revoked = asyncio.create_task(_Listener(r.runner).on_partitions_revoked({tp}))
    await asyncio.sleep(0)
    answer.set()
    await asyncio.wait_for(round_two, 5)
    await asyncio.wait_for(revoked, 5)
    assert r.consumer.commits[tp] == 4 and sent == [{tp: 2}, {tp: 4}], "commits in order, the revocation after"


async def test_a_failed_commit_is_sent_again_with_the_next_and_an_idle_round_sends_it() -> None:
    calls = Counter[str]()

    def first_commit_fails(call: str) -> BaseException | None:
        calls[call] += 1
        return KafkaError("coordinator moved") if call == "commit" and calls[call] == 1 else None

    r = rig(partitions=1, consumer_faults=first_commit_fails)
    tp = TopicPartition(r.main, 0)
    fill(r, 3, partitions=1)
    await r.runner.step()
    await r.runner.settle_commit()
    assert r.consumer.commits.get(tp) is None and calls["commit"] == 1
    await r.runner.step()  # nothing new to read: the round sends the commit that failed
    await r.runner.settle_commit()
    assert r.consumer.commits[tp] == 3 and len(r.sink.written) == 3, "written once, committed by the retry"
