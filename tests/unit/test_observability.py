"""The pure parts of the operator's view: degradation levels, lag and backlog math, the per-client rate
limit, bearer tokens, breaker overrides, the web exposure rule, the ingest body split, payload-free logs
and the health CLI's exit status."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.cli.health import EX_DEGRADED, EX_UNHEALTHY, default_url, exit_status, render
from pipeline.config import ConfigError, is_loopback, load_settings
from pipeline.logging import drop_payloads
from pipeline.observability.collector import PartitionLag, sink_backlog
from pipeline.observability.health import degradation, overall
from pipeline.observability.lag import lag_seconds, partition_lag
from pipeline.reliability.breaker import BreakerState, CircuitBreaker, Forced
from pipeline.reliability.policies import BreakerPolicy
from pipeline.reliability.ratelimit import ClientBuckets
from pipeline.web.auth import authorized, bearer_token
from pipeline.web.ingest import BodyError, split_events
from tests.unit.test_flow_and_routing import FakeClock

# -- degradation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("open_breakers", "sinks", "ratio", "level"),
    [
        (0, 3, None, "normal"),
        (0, 3, 1.0, "normal"),
        (0, 3, 0.5, "normal"),
        (1, 3, 1.0, "minor"),
        (0, 3, 0.49, "minor"),
        (2, 4, 1.0, "moderate"),
        (0, 3, 0.2, "moderate"),
        (3, 3, 1.0, "severe"),
        (0, 3, 0.09, "severe"),
        (0, 3, 0.01, "critical"),
        (3, 3, 0.0, "critical"),
        (1, 3, 0.2, "moderate"),  # the worse of the two
        (0, 0, None, "normal"),
    ],
)
def test_degradation_levels(open_breakers: int, sinks: int, ratio: float | None, level: str) -> None:
    result = degradation(open_breakers, sinks, ratio)
    assert result.level == level
    assert bool(result.reasons) == (level != "normal")


def test_overall_status_is_the_worst_check() -> None:
    assert overall(["healthy", "healthy"]) == "healthy"
    assert overall(["healthy", "degraded"]) == "degraded"
    assert overall(["degraded", "unhealthy", "healthy"]) == "unhealthy"


# -- lag and backlog --------------------------------------------------------------------------------


def test_partition_lag_counts_from_the_commit_or_from_what_retention_left() -> None:
    assert partition_lag(committed=5, low=0, high=12) == 7
    assert partition_lag(committed=12, low=0, high=12) == 0
    assert partition_lag(committed=None, low=3, high=10) == 7  # no commit: everything retained waits
    assert partition_lag(committed=-1, low=0, high=4) == 4
    assert partition_lag(committed=2, low=6, high=10) == 4  # records below 6 were deleted by retention
    assert partition_lag(committed=15, low=0, high=10) == 0


def test_lag_seconds_is_the_age_of_the_next_record() -> None:
    assert lag_seconds(0, None, 10_000) == 0.0
    assert lag_seconds(3, 4_000, 10_000) == 6.0
    assert lag_seconds(3, None, 10_000) is None
    assert lag_seconds(3, 12_000, 10_000) == 0.0  # clock skew never gives a negative age


def _part(topic: str, lag: int, seconds: float | None, size: int | None = 100) -> PartitionLag:
    return PartitionLag("g", topic, 0, lag, seconds, size)


def test_backlog_age_headroom_and_bytes_of_a_sink() -> None:
    retention = {"sink": 1_000_000, "sink.retry.1s": 100_000, "endless": None}
    idle = sink_backlog("s", "sink", [_part("sink", 0, 0.0), _part("sink.retry.1s", 0, 0.0)], retention)
    assert (idle.queue_size, idle.queue_bytes, idle.age_sec) == (0, 0, 0.0)
    assert (idle.headroom_sec, idle.headroom_ratio) == (1000.0, 1.0)

    busy = sink_backlog("s", "sink", [_part("sink", 10, 250.0, 200), _part("sink.retry.1s", 5, 50.0, None)], retention)
    assert busy.queue_size == 15
    assert busy.queue_bytes == 10 * 200 + 5 * 200  # an unsampled partition is estimated by the mean
    assert busy.age_sec == 250.0
    # main: 1000 - 250 = 750 s (75%); retry tier: 100 - 50 = 50 s (50%): the tier is nearer deletion
    assert busy.headroom_sec == 50.0 and busy.headroom_ratio == 0.5

    deleting = sink_backlog("s", "sink", [_part("sink", 1, 1200.0)], retention)
    assert deleting.headroom_sec == -200.0 and deleting.headroom_ratio == 0.0

    endless = sink_backlog("s", "endless", [_part("endless", 3, 10.0)], retention)
    assert endless.headroom_sec == math.inf and endless.headroom_ratio == 1.0


# -- per-client rate limit --------------------------------------------------------------------------


def test_client_buckets_allow_a_burst_then_answer_with_the_wait() -> None:
    clock = FakeClock()
    buckets = ClientBuckets(2.0, capacity=3, clock=clock)
    assert [buckets.try_take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.try_take("a") == pytest.approx(0.5)  # one token at 2/s
    assert buckets.try_take("b") == 0.0  # per client
    clock.now += 0.5
    assert buckets.try_take("a") == 0.0
    assert buckets.try_take("a") == pytest.approx(0.5)  # a refused request takes nothing
    assert buckets.try_take("a", 4) == math.inf  # more than the bucket holds: never


def test_client_buckets_keep_a_bounded_number_of_clients() -> None:
    buckets = ClientBuckets(1.0, capacity=1, max_clients=2, clock=FakeClock())
    for client in ("a", "b", "c"):
        assert buckets.try_take(client) == 0.0
    assert buckets.try_take("a") == 0.0  # forgotten (least recently used): full again
    assert len(buckets._buckets) == 2


# -- bearer tokens ----------------------------------------------------------------------------------


def test_bearer_tokens() -> None:
    token = SecretStr("s3cret")
    assert bearer_token("Bearer s3cret") == "s3cret"
    assert bearer_token("bearer   s3cret ") == "s3cret"
    assert bearer_token("Basic czNjcmV0") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None
    assert authorized("Bearer s3cret", token)
    assert not authorized("Bearer s3cre", token)
    assert not authorized(None, token)
    assert not authorized("s3cret", token)
    assert authorized(None, None)  # no token configured: open


# -- breaker overrides ------------------------------------------------------------------------------


def test_forced_breakers_hold_until_reset_and_report_each_move() -> None:
    moves: list[tuple[BreakerState, BreakerState, str]] = []
    cb = CircuitBreaker(
        "tsdb", BreakerPolicy(failure_threshold=1), on_transition=lambda n, old, new, why: moves.append((old, new, why))
    )

    def state() -> BreakerState:  # a call, so the type checker does not narrow it between steps
        return cb.state

    cb.force(Forced.OPEN, "admin force_open")
    assert state() is BreakerState.OPEN and not cb.allow_request() and cb.open_count == 1
    cb.force(Forced.CLOSED, "admin force_close")
    for _ in range(5):  # failures are not counted while forced closed
        assert cb.allow_request()
        cb.record_failure()
    assert state() is BreakerState.CLOSED
    cb.trip("sink asked to wait", for_seconds=60)
    assert state() is BreakerState.CLOSED
    cb.reset("admin reset")
    assert cb.forced is Forced.NONE and cb.snapshot()["consecutive_failures"] == 0
    assert cb.allow_request()
    cb.record_failure()  # normal again: threshold 1 opens it
    assert state() is BreakerState.OPEN
    assert [(old, new) for old, new, _ in moves] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.CLOSED),
        (BreakerState.CLOSED, BreakerState.OPEN),
    ]
    assert moves[0][2] == "admin force_open"


# -- web exposure -----------------------------------------------------------------------------------


def _settings(**env: str) -> Any:
    base = {"PIPELINE_CONFIG": "", "TSDB_ENABLED": "true", "TSDB_DSN": "postgresql://u@127.0.0.1:1/db"}
    return load_settings(environ={**base, **env})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "worker-1.example"])
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_ingest_on_a_public_address_needs_its_token_or_an_explicit_opt_out() -> None:
    with pytest.raises(ConfigError, match="INGEST_TOKEN"):
        _settings(WEB_HOST="0.0.0.0").check_runnable()
    _settings(WEB_HOST="0.0.0.0", INGEST_TOKEN="t").check_runnable()
    _settings(WEB_HOST="0.0.0.0", INGEST_HTTP_ENABLED="false").check_runnable()
    _settings(WEB_HOST="0.0.0.0", WEB_ALLOW_UNAUTHENTICATED="true").check_runnable()
    _settings(WEB_HOST="0.0.0.0", WEB_ENABLED="false").check_runnable()
    _settings().check_runnable()


def test_tokens_are_secrets() -> None:
    settings = _settings(ADMIN_TOKEN="adm1n-t0ken", INGEST_TOKEN="1ngest-t0ken")
    assert "adm1n-t0ken" not in repr(settings) and "1ngest-t0ken" not in repr(settings)


# -- ingest bodies ----------------------------------------------------------------------------------


def test_split_events_keeps_each_events_exact_bytes() -> None:
    assert split_events(b'{"a": 1.10}') == [b'{"a": 1.10}']
    assert split_events(b' [ {"a": 1.10} , {"b": [1, 2]} ] \n') == [b'{"a": 1.10}', b'{"b": [1, 2]}']
    assert split_events(b"[]") == []
    assert split_events(b'{"a": 1}\n{"b": 2}\n') == [b'{"a": 1}', b'{"b": 2}']
    assert split_events(b'{"a": 1}\n\n{"b": 2}', "application/x-ndjson") == [b'{"a": 1}', b'{"b": 2}']
    pretty = json.dumps({"a": 1, "b": {"c": 2}}, indent=2).encode()
    assert split_events(pretty) == [pretty]  # one object over several lines is not NDJSON


@pytest.mark.parametrize("body", [b"", b"  \n", b'[{"a": 1}', b'[{"a": 1}} ]', b'[{"a": 1}] x', b"\xff\xfe"])
def test_split_events_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(BodyError):
        split_events(body)


# -- logs -------------------------------------------------------------------------------------------


def test_payloads_never_reach_an_info_line() -> None:
    line = drop_payloads(None, "info", {"event": "x", "payload": "secret stuff", "value": b"abc", "sink": "tsdb"})
    assert line == {"event": "x", "payload": "<omitted: 12 bytes>", "value": "<omitted: 3 bytes>", "sink": "tsdb"}
    debug = {"event": "x", "payload": "kept at debug"}
    assert drop_payloads(None, "debug", dict(debug)) == debug


# -- the health CLI ---------------------------------------------------------------------------------


def _bodies(status: str, ready: str = "ready") -> dict[str, Any]:
    return {
        "detailed": {"status": status, "checks": {"sink:tsdb": {"status": status, "response_time_ms": 1.0}}},
        "ready": {"status": ready, "checks": {"broker": ready == "ready"}},
        "circuit-breakers": {},
        "dlq": {"total_messages": 2, "queues": [{"topic": "t.dlq", "messages": 2}]},
        "degradation": {"level": "normal", "reasons": []},
    }


def test_health_cli_exit_status_and_text() -> None:
    assert exit_status(_bodies("healthy")) == 0
    assert exit_status(_bodies("degraded")) == EX_DEGRADED
    assert exit_status(_bodies("unhealthy")) == EX_UNHEALTHY
    assert exit_status(_bodies("healthy", ready="not_ready")) == EX_UNHEALTHY
    text = "\n".join(render(_bodies("degraded")))
    assert "status: degraded" in text and "sink:tsdb: degraded" in text and "t.dlq: 2" in text
    assert default_url("0.0.0.0", 6066) == "http://127.0.0.1:6066"
    assert default_url("::1", 7) == "http://[::1]:7"


def test_a_sinks_series_exist_at_zero_before_its_first_write() -> None:
    """rate() and histogram_quantile() see the first write only as an increase from 0."""
    from prometheus_client import generate_latest

    from pipeline.observability import metrics

    metrics.init_sink("zero-sink", ["1s"])
    text = generate_latest(metrics.REGISTRY).decode()
    for series in (
        'mship_sink_write_seconds_bucket{le="0.005",sink="zero-sink"} 0.0',
        'pipeline_sink_batch_size_count{sink="zero-sink"} 0.0',
        'mship_sink_retry_total{sink="zero-sink",tier="1s"} 0.0',
        'pipeline_sink_events_written_total{sink="zero-sink"} 0.0',
    ):
        assert series in text, series
