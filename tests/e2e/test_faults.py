"""Zero loss under sink faults, on a real broker and a real PostgreSQL, with faults injected by a TCP
proxy between the worker and the database (and a scripted HTTP sink for Retry-After)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Set

import pytest

from pipeline import headers as h
from pipeline.config import load_settings
from pipeline.observability.lag import group_lag, group_offsets, topic_ends, topic_size
from pipeline.reliability.policies import tier_label
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.e2e.trace import where_are_they
from tests.faults import FaultProxy, through
from tests.http_sink_server import Script, http_sink_server
from tests.support import Message, count_rows, delete_records, fetch, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def fast(sink: str = "TSDB") -> dict[str, str]:
    """Small batches, short backoffs and a quick breaker for the sink with env prefix `sink`."""
    return {
        f"{sink}_BATCH_SIZE": "100",
        f"{sink}_LINGER_MS": "50",
        f"{sink}_MAX_RETRIES": "5",
        f"{sink}_INITIAL_BACKOFF_MS": "200",
        f"{sink}_MAX_BACKOFF_MS": "1000",
        f"{sink}_JITTER_FACTOR": "0.2",
        f"{sink}_TIMEOUT_MS": "2000",
        f"{sink}_FAILURE_THRESHOLD": "3",
        f"{sink}_OPEN_DURATION_SEC": "2",
        f"{sink}_SUCCESS_THRESHOLD": "1",
        f"{sink}_HALF_OPEN_MAX_INFLIGHT": "1",
    }


FAST = fast()


def events(start: int, count: int, poison: Set[int] = frozenset()) -> list[Message]:
    out: list[Message] = []
    for n in range(start, start + count):
        body = event(n)
        if n in poison:
            body["payload"] = {"n": n, "note": "nul \u0000 byte"}  # valid JSON, rejected by PostgreSQL
        out.append((None, str(n).encode(), json.dumps(body).encode(), []))
    return out


def tier_topics(stack: Stack, sink: str = "tsdb") -> list[str]:
    settings = load_settings(environ=stack.env())
    return [f"{stack.prefix}sink.{sink}.retry.{tier_label(d)}" for d in settings.sinks[sink].retry.tier_delays_ms()]


async def drained(stack: Stack, sink: str = "tsdb") -> bool:
    group = f"{stack.app_id}.deliver.{sink}"
    for topic in [stack.sink_topic(sink), *tier_topics(stack, sink)]:
        if await group_lag(stack.bootstrap, group, topic) not in (0,):
            if await topic_size(stack.bootstrap, topic) == 0:
                continue
            return False
    return True


async def wait_delivered(stack: Stack, rows: int, timeout: float = 120) -> None:
    async def probe() -> tuple[int, bool]:
        return await count_rows(stack.dsn, stack.table), await drained(stack)

    try:
        await poll(probe, lambda v: v == (rows, True), timeout=timeout, interval=0.5, what=f"{rows} rows, drained")
    except AssertionError:
        for worker in stack.workers:
            print(f"--- {worker.name} ---\n{worker.tail(60)}")
        topics = [stack.ingest_topic, f"{stack.ingest_topic}.by-hash", stack.sink_topic(), *tier_topics(stack)]
        print(await where_are_they(stack, [*topics, stack.sink_topic() + ".dlq"]))
        raise


async def start(stack: Stack, *layers: dict[str, str], **env: str) -> None:
    for layer in layers:
        stack.extra_env.update(layer)
    stack.extra_env.update(env)
    result = run_cli("topics", "apply", env=stack.env())
    assert result.returncode == 0, result.stdout + result.stderr


def transitions(stack: Stack) -> list[str]:
    return [line["transition"] for w in stack.workers for line in w.logged("circuit breaker")]


async def test_sink_down_twenty_seconds_then_back(stack: Stack, proxy: FaultProxy) -> None:
    await start(stack, FAST, TSDB_DSN=through(stack.dsn, proxy))
    stack.worker()
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 1000))
    await wait_delivered(stack, 1000)

    proxy.set("down")
    outage_started = time.monotonic()
    await produce(stack.bootstrap, stack.ingest_topic, events(1000, 1000))
    await poll(lambda: asyncio.sleep(0, transitions(stack)), lambda t: "closed->open" in t, timeout=30, what="open")
    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))  # the outage itself lasts 20 s
    assert await count_rows(stack.dsn, stack.table) == 1000, "nothing can land while the sink is down"
    proxy.set("pass")

    await wait_delivered(stack, 2000)
    assert await topic_size(stack.bootstrap, stack.sink_topic() + ".dlq") == 0
    seen = transitions(stack)
    first_open = seen.index("closed->open")
    assert "open->half_open" in seen[first_open:]
    assert seen[-1] == "half_open->closed", seen
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == list(range(2000))


async def test_flapping_sink_loses_and_duplicates_nothing(stack: Stack, proxy: FaultProxy) -> None:
    await start(stack, FAST, TSDB_MAX_RETRIES="15", TSDB_BATCH_SIZE="50", TSDB_DSN=through(stack.dsn, proxy))
    proxy.set("flap", reset_probability=0.5)
    stack.worker()
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 1000))
    await wait_delivered(stack, 1000, timeout=180)
    assert proxy.resets >= 10, f"the proxy should have reset connections, reset {proxy.resets}"
    failed = [line for w in stack.workers for line in w.logged("delivery failed")]
    assert failed, "writes should have failed and been retried"
    assert await topic_size(stack.bootstrap, stack.sink_topic() + ".dlq") == 0
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == list(range(1000))


async def test_one_percent_poison_goes_to_the_dlq_with_full_context(stack: Stack) -> None:
    poison = set(range(7, 2000, 100))  # 20 events
    await start(stack, FAST)
    stack.worker()
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 2000, poison))
    await wait_delivered(stack, 2000 - len(poison))
    dead = await read_topic(stack.bootstrap, stack.sink_topic() + ".dlq")
    dead_ns = sorted(json.loads(r.value or b"{}")["payload"]["n"] for r in dead)
    assert dead_ns == sorted(poison)
    for record in dead:
        hd = record.headers
        assert hd[h.ERROR_REASON] == b"fatal"
        assert hd[h.ERROR_CLASS] == b"FatalSinkError"
        assert b"22" in hd[h.ERROR_MESSAGE]  # SQLSTATE class 22: data exception
        assert hd[h.SINK] == b"tsdb" and hd[h.ATTEMPT] == b"1"
        assert hd[h.EVENT_HASH] == record.key
        assert hd[h.FAILED_TOPIC].decode() == stack.sink_topic()
        assert int(hd[h.FAILED_OFFSET]) >= 0 and int(hd[h.FAILED_PARTITION]) >= 0
        assert hd[h.ORIGIN_TOPIC].decode() == stack.ingest_topic
        assert hd[h.FIRST_FAILED_AT] and hd[h.FAILED_AT]
        assert b"Traceback" in hd[h.ERROR_TRACEBACK]
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == sorted(set(range(2000)) - poison)


async def test_slow_sink_times_out_and_everything_is_retried(stack: Stack, proxy: FaultProxy) -> None:
    await start(stack, FAST, TSDB_TIMEOUT_MS="1000", TSDB_DSN=through(stack.dsn, proxy))
    stack.worker()
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 200))
    await wait_delivered(stack, 200)
    proxy.set("slow", delay=2.5)
    await produce(stack.bootstrap, stack.ingest_topic, events(200, 300))

    def timeouts() -> int:
        return sum(1 for w in stack.workers for line in w.log_lines() if line.get("error_class") == "SinkTimeout")

    await poll(lambda: asyncio.sleep(0, timeouts()), lambda n: n >= 2, timeout=60, what="timeouts")
    proxy.set("pass")
    await wait_delivered(stack, 500)
    assert await topic_size(stack.bootstrap, stack.sink_topic() + ".dlq") == 0


async def test_http_429_retry_after_is_honoured(stack: Stack) -> None:
    script = Script(responses=[(429, {"Retry-After": "2"})])
    with http_sink_server(script) as url:
        env = {k.replace("TSDB_", "HTTP_"): v for k, v in FAST.items()}
        env.update(TSDB_ENABLED="false", HTTP_ENABLED="true", HTTP_URL=url, HTTP_BATCH_SIZE="50")
        await start(stack, env)
        stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, events(0, 150))

        async def delivered() -> int:
            return len(set(script.delivered_hashes()))

        await poll(delivered, lambda n: n == 150, timeout=90, what="150 events at the HTTP sink")
    first, second = script.received[0], script.received[1]
    assert first.status == 429
    assert second.at - first.at >= 2.0, f"next request {second.at - first.at:.2f}s after the 429"
    assert await topic_size(stack.bootstrap, f"{stack.prefix}sink.http.dlq") == 0


async def test_sigkill_while_events_wait_in_a_retry_tier_and_move_to_the_dlq(stack: Stack, proxy: FaultProxy) -> None:
    never_open = {"TSDB_FAILURE_THRESHOLD": "100000", "TSDB_MINIMUM_REQUESTS": "100000"}
    slow_tiers = {"TSDB_INITIAL_BACKOFF_MS": "3000", "TSDB_MAX_BACKOFF_MS": "3000", "TSDB_MAX_RETRIES": "20"}
    await start(stack, FAST, never_open, slow_tiers, TSDB_DSN=through(stack.dsn, proxy))
    tier = tier_topics(stack)[0]

    # Phase 1: the sink goes down and the breaker never opens, so events pile up in the retry tier.
    first = stack.worker("first")
    await poll(lambda: asyncio.sleep(0, first.logged("delivery started")), bool, timeout=60, what="delivery")
    proxy.set("down")
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 500))
    await poll(lambda: topic_size(stack.bootstrap, tier), lambda n: n >= 500, timeout=60, what="events in a tier")
    first.kill()

    # Phase 2: the sink is back; 10% poison; kill while dead letters are being written.
    proxy.set("pass")
    poison = set(range(500, 1000, 10))
    await produce(stack.bootstrap, stack.ingest_topic, events(500, 500, poison))
    second = stack.worker("second")
    dlq = stack.sink_topic() + ".dlq"
    await poll(lambda: topic_size(stack.bootstrap, dlq), lambda n: n >= 5, timeout=90, interval=0.05, what="DLQ")
    second.kill()

    stack.worker("third")
    await wait_delivered(stack, 1000 - len(poison), timeout=150)
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == sorted(set(range(1000)) - poison)
    dead = await read_topic(stack.bootstrap, dlq)
    assert {json.loads(r.value or b"{}")["payload"]["n"] for r in dead} == poison


async def test_events_deleted_by_sink_topic_retention_during_an_outage_are_counted(
    stack: Stack, proxy: FaultProxy
) -> None:
    """An outage longer than the store-and-forward queue: the sink topic's retention deletes events that
    waited for the sink. The worker cannot deliver them, but it must count and report every one."""
    from aiokafka import TopicPartition

    await start(stack, FAST, TSDB_OPEN_DURATION_SEC="600", TSDB_DSN=through(stack.dsn, proxy))
    first = stack.worker("first")
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 100))
    await wait_delivered(stack, 100)

    proxy.set("down")
    # A few events open the breaker (their failures move them to a retry tier); what comes after waits in
    # the sink topic, where retention can reach it. (Sent at once, a batch's failures would move it all to a
    # retry tier before the breaker opens.)
    await produce(stack.bootstrap, stack.ingest_topic, events(100, 3))
    await poll(lambda: asyncio.sleep(0, transitions(stack)), lambda t: "closed->open" in t, timeout=30, what="open")
    await produce(stack.bootstrap, stack.ingest_topic, events(103, 197))
    await poll(lambda: topic_size(stack.bootstrap, stack.sink_topic()), lambda n: n == 300, timeout=30, what="fan-out")
    by_hash = f"{stack.ingest_topic}.by-hash"
    await poll(lambda: group_lag(stack.bootstrap, stack.app_id, by_hash), lambda n: n == 0, timeout=30, what="dedupe")
    first.kill()  # the breaker stays open for 600 s: nothing moved since it opened

    committed = await group_offsets(stack.bootstrap, f"{stack.app_id}.deliver.tsdb")
    cut = {}
    for partition, end in (await topic_ends(stack.bootstrap, stack.sink_topic())).items():
        tp = TopicPartition(stack.sink_topic(), partition)
        start_at = max(0, committed.get(tp, 0))
        cut[tp] = (start_at, min(start_at + 5, end))
    # What retention does when the queue is full: the oldest waiting events go.
    await delete_records(stack.bootstrap, {tp: b for tp, (_, b) in cut.items()})
    deleted = sum(b - a for a, b in cut.values())
    assert deleted > 0

    proxy.set("pass")
    second = stack.worker("second")
    await wait_delivered(stack, 300 - deleted)
    reports = second.logged(
        "events deleted by the topic's retention before delivery; size QUEUE_MAX_BYTES for longer outages"
    )
    assert sum(r["deleted"] for r in reports) == deleted, second.tail()


async def test_an_idle_half_open_breaker_closes_on_the_sinks_health_check(stack: Stack, proxy: FaultProxy) -> None:
    """The breaker needs three successes to close, and the first probe once the database is back writes the
    whole waiting batch: with nothing left to write it closes on PostgreSQL's own health check (`SELECT 1`),
    instead of staying half-open (health "severe") until the next event arrives."""
    await start(stack, FAST, TSDB_DSN=through(stack.dsn, proxy), TSDB_FAILURE_THRESHOLD="1", TSDB_SUCCESS_THRESHOLD="3")
    stack.worker()
    await produce(stack.bootstrap, stack.ingest_topic, events(0, 100))
    await wait_delivered(stack, 100)

    proxy.set("down")
    await produce(stack.bootstrap, stack.ingest_topic, events(100, 20))
    await poll(lambda: asyncio.sleep(0, transitions(stack)), lambda t: "closed->open" in t, timeout=30, what="open")
    assert await count_rows(stack.dsn, stack.table) == 100
    proxy.set("pass")
    await wait_delivered(stack, 120)
    written = time.monotonic()
    await poll(
        lambda: asyncio.sleep(0, transitions(stack)),
        lambda t: t[-1] == "half_open->closed",
        timeout=15,
        what="the idle half-open breaker closed by health probes",
    )
    closed_after = time.monotonic() - written
    # One probe per idle second and two successes still needed: seconds, well inside the poll's 15.
    assert closed_after < 8, f"the idle breaker took {closed_after:.1f}s to close"
    assert await topic_size(stack.bootstrap, stack.sink_topic() + ".dlq") == 0
