"""The Loki sink end to end: ingest topic on the real broker -> worker -> tests/loki_server.py (a Loki-protocol
server that validates like Loki), and against a real Loki when LOKI_URL is set."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from pipeline import headers as h
from pipeline.config import load_settings
from pipeline.events import canonical_json, format_timestamp
from pipeline.observability.lag import group_lag, topic_size
from pipeline.reliability.policies import tier_label
from pipeline.sinks.base import RetryableSinkError, SinkRecord
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.loki.sink import LokiSink
from tests.e2e.conftest import Stack
from tests.e2e.test_faults import fast
from tests.loki_server import Forced, LokiServer, loki_server
from tests.support import Message, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FAST = {"TSDB_ENABLED": "false", "LOKI_ENABLED": "true", **fast("LOKI"), "LOKI_EVENT_LABEL_ALLOWLIST": "deck"}
# Event timestamps: recent (real Loki rejects samples older than a week or newer than now + 10 minutes).
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)

REAL_LOKI = os.environ.get("LOKI_URL") or None


def event(n: int, *, source: str = "vessel", at: datetime | None = None) -> dict[str, Any]:
    return {
        "timestamp": format_timestamp(at or BASE + timedelta(milliseconds=n)),
        "source": f"{source}-{n % 5}",
        "type": "engine.telemetry",
        "labels": {"deck": str(n % 2), "unit": "c"},
        "payload": {"n": n, "temp": 40.5 + n % 10},
    }


def messages(ns: range | list[int], **kw: Any) -> list[Message]:
    return [(None, str(n).encode(), json.dumps(event(n, **kw)).encode(), []) for n in ns]


def dlq(stack: Stack) -> str:
    return f"{stack.prefix}sink.loki.dlq"


# Settings a developer may have exported for the real-Loki test; empty means unset for the test server.
UNSET_REAL_LOKI = {name: "" for name in ("LOKI_TENANT_ID", "LOKI_USERNAME", "LOKI_PASSWORD", "LOKI_BEARER_TOKEN")}


async def start(stack: Stack, **env: str) -> None:
    stack.extra_env.update(FAST)
    if env.get("LOKI_URL") != REAL_LOKI:
        stack.extra_env.update(UNSET_REAL_LOKI)
    stack.extra_env.update(env)
    result = run_cli("topics", "apply", env=stack.env())
    assert result.returncode == 0, result.stdout + result.stderr


async def drained(stack: Stack) -> bool:
    """The delivery group has consumed the sink topic and every retry tier (nothing waits in a tier)."""
    settings = load_settings(environ=stack.env())
    tiers = [f"{stack.prefix}sink.loki.retry.{tier_label(d)}" for d in settings.sinks["loki"].retry.tier_delays_ms()]
    group = f"{stack.app_id}.deliver.loki"
    for topic in [stack.sink_topic("loki"), *tiers]:
        if await group_lag(stack.bootstrap, group, topic) != 0 and await topic_size(stack.bootstrap, topic) > 0:
            return False
    return True


async def wait_stored(stack: Stack, server: LokiServer, count: int, timeout: float = 120) -> None:
    """Delivery drained with at least `count` entries in Loki; then exactly `count` (an entry stored twice
    fails here at once instead of a timeout)."""

    async def probe() -> tuple[int, bool]:
        return server.count(), await drained(stack)

    try:
        await poll(probe, lambda v: v[0] >= count and v[1], timeout=timeout, interval=0.5, what=f"{count} lines")
    except AssertionError:
        for worker in stack.workers:
            print(f"--- {worker.name} ---\n{worker.tail(60)}")
        raise
    assert server.count() == count, f"{server.count()} entries stored for {count} events"


def stored_ns(server: LokiServer) -> list[int]:
    return sorted(e["payload"]["n"] for e in server.events())


# --------------------------------------------------------------------------------------------------
# Exact counts


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_every_event_exactly_once_in_loki(stack: Stack, encoding: str) -> None:
    auth = (
        {"LOKI_USERNAME": "shipper", "LOKI_PASSWORD": "s3cret-pw"}
        if encoding == "protobuf"
        else {"LOKI_BEARER_TOKEN": "tok-s3cret"}
    )
    with loki_server() as server:
        await start(stack, LOKI_URL=server.url, LOKI_ENCODING=encoding, LOKI_TENANT_ID="team-a", **auth)
        unique = messages(range(2000))
        duplicates: list[Message] = [
            (None, b"dup", value, []) for _, _, value, _ in unique[::4]
        ]  # 500 copies, other partitions
        await produce(stack.bootstrap, stack.ingest_topic, unique + duplicates)
        worker = stack.worker()
        await wait_stored(stack, server, 2000)

        assert stored_ns(server) == list(range(2000))
        assert server.tenants() == {"team-a"}
        assert {tuple(sorted(labels)) for labels in server.label_sets()} == {("deck", "source", "type")}
        assert len(server.label_sets()) == 10  # 5 sources x 2 decks
        pushes = server.pushes()
        assert pushes and all(p.status == 204 and p.tenant == "team-a" for p in pushes)
        if encoding == "protobuf":
            expected_auth = "Basic " + base64.b64encode(b"shipper:s3cret-pw").decode()
            assert {(p.content_type, p.content_encoding) for p in pushes} == {("application/x-protobuf", None)}
        else:
            expected_auth = "Bearer tok-s3cret"
            assert {(p.content_type, p.content_encoding) for p in pushes} == {("application/json", "gzip")}
        assert {p.authorization for p in pushes} == {expected_auth}
        assert await topic_size(stack.bootstrap, dlq(stack)) == 0
        log = worker.log_path.read_text()
        assert "s3cret" not in log, "a secret reached the worker log"


async def test_redelivered_batch_is_stored_once() -> None:
    with loki_server() as server:
        sink = LokiSink(LokiSinkSettings(name="loki", enabled=True, url=server.url))
        await sink.open()
        try:
            batch = [SinkRecord(f"h{n}", canonical_json(event(n))) for n in range(300)]
            assert await sink.write(batch) == 300
            assert await sink.write(batch) == 300  # a redelivery after a crash: same entries again
            assert await sink.write(list(reversed(batch[:150]))) == 150  # a bisected half, another order
            assert server.count() == 300 and stored_ns(server) == list(range(300))
            # The response of a stored push is lost (500 after storing): the retry stores nothing new.
            server.script(Forced(500, body="lost response", after_store=True))
            more = [SinkRecord(f"h{n}", canonical_json(event(n))) for n in range(300, 400)]
            with pytest.raises(RetryableSinkError, match="loki 500: lost response"):
                await sink.write(more)
            await sink.write(more)
            assert server.count() == 400 and stored_ns(server) == list(range(400))
            assert all(p.status in (204, 500) for p in server.pushes())
        finally:
            await sink.close()


# --------------------------------------------------------------------------------------------------
# Error classification


async def test_429_retry_after_is_honoured(stack: Stack) -> None:
    with loki_server() as server:
        server.script(Forced(429, {"Retry-After": "2"}, "Ingestion rate limit exceeded for user fake"))
        await start(stack, LOKI_URL=server.url)
        stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, messages(range(300)))
        await wait_stored(stack, server, 300)
        first, second = server.pushes()[0], server.pushes()[1]
        assert first.status == 429 and first.forced
        assert second.at - first.at >= 2.0, f"next push {second.at - first.at:.2f}s after the 429"
        assert stored_ns(server) == list(range(300))
        assert await topic_size(stack.bootstrap, dlq(stack)) == 0


async def test_5xx_are_retried_and_everything_is_delivered_once(stack: Stack) -> None:
    with loki_server() as server:
        server.script(
            Forced(500, body="internal error"),
            Forced(503, body="ingester not ready", after_store=True),  # stored, but the answer says failed
            Forced(502),
        )
        await start(stack, LOKI_URL=server.url, LOKI_BATCH_SIZE="50")
        worker = stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, messages(range(500)))
        await wait_stored(stack, server, 500)
        assert [p.status for p in server.pushes()[:3]] == [500, 503, 502]
        assert stored_ns(server) == list(range(500))
        assert await topic_size(stack.bootstrap, dlq(stack)) == 0
        failed = [line for line in worker.log_lines() if line.get("error_class") == "RetryableSinkError"]
        assert failed, "the 5xx should have been logged as retryable failures"


async def test_bisection_after_a_400_stores_each_entry_once(stack: Stack) -> None:
    """A push with good entries and a rejected one: Loki stores the good ones and answers 400; the runner
    bisects and re-sends them, the rule-following server drops them as exact duplicates, and only the
    rejected events reach the DLQ."""
    stack.partitions = 1  # one partition: the stream's order is the topic's order
    with loki_server(max_chunk_age=60) as server:  # unordered writes, 30 s behind a stream's newest
        await start(stack, LOKI_URL=server.url, LOKI_BATCH_SIZE="200")
        stack.worker()
        ancient = BASE - timedelta(days=8)
        batch = messages(range(0, 150)) + messages([150], at=ancient) + messages(range(151, 300))
        await produce(stack.bootstrap, stack.ingest_topic, batch)
        await wait_stored(stack, server, 299)
        # An entry a minute older than the newest of its stream (vessel-0, deck 0: n=290 at BASE+290ms):
        # Loki's "entry too far behind".
        await produce(stack.bootstrap, stack.ingest_topic, messages([300], at=BASE - timedelta(minutes=1)))
        await poll(lambda: topic_size(stack.bootstrap, dlq(stack)), lambda n: n >= 2, timeout=60, what="2 DLQ")
        await wait_stored(stack, server, 299)

        dead = {json.loads(r.value or b"{}")["payload"]["n"]: r for r in await read_topic(stack.bootstrap, dlq(stack))}
        assert sorted(dead) == [150, 300]
        assert stored_ns(server) == [n for n in range(300) if n != 150]  # each good entry once
        too_old = dead[150].headers
        assert too_old[h.ERROR_CLASS] == b"FatalSinkError" and too_old[h.ERROR_REASON] == b"fatal"
        assert b'loki 400: entry for stream \'{deck="0", source="vessel-0"' in too_old[h.ERROR_MESSAGE]
        assert b"has timestamp too old" in too_old[h.ERROR_MESSAGE]
        behind = dead[300].headers[h.ERROR_MESSAGE]
        assert b"reason: 'entry too far behind" in behind and b"total ignored: 1 out of 1" in behind
        pushes = server.pushes()
        assert any(p.status == 400 and p.stored > 0 for p in pushes), "a 400 push also stored its good entries"
        assert sum(p.duplicates for p in pushes) > 0, "bisection re-sent stored entries; Loki dropped them"


async def test_redelivery_after_a_sigkill_with_bucketed_streams_stores_each_entry_once(stack: Stack) -> None:
    """LOKI_MAX_STREAMS=3 and more label sets than that: a worker killed after Loki stored its push and
    before it committed; the next worker sends the same events again, into the same streams, and Loki
    drops them as exact duplicates. (Before, the first sets a worker saw kept their own streams, so the
    new worker put the events into other streams and Loki stored them twice.)"""
    with loki_server() as server:
        await start(stack, LOKI_URL=server.url, LOKI_MAX_STREAMS="3", LOKI_TIMEOUT_MS="10000")
        first = stack.worker("first")
        earlier = [n for n in range(30) if n % 10 < 3]  # 3 label sets (source n % 5, deck n % 2)
        await produce(stack.bootstrap, stack.ingest_topic, messages(earlier))
        await wait_stored(stack, server, len(earlier))
        later = [n for n in range(100, 170) if n % 10 >= 3]  # 7 other label sets
        server.script(Forced(204, after_store=True, hold=30))  # stored, then no answer
        await produce(stack.bootstrap, stack.ingest_topic, messages(later))

        async def stored() -> int:
            return server.count()

        await poll(stored, lambda n: n > len(earlier), timeout=60, interval=0.05, what="the push stored")
        first.kill()
        group, topic = f"{stack.app_id}.deliver.loki", stack.sink_topic("loki")
        assert await group_lag(stack.bootstrap, group, topic) != 0, "committed before the kill: proves nothing"

        stack.worker("second")
        await wait_stored(stack, server, len(earlier) + len(later))
        assert stored_ns(server) == sorted(earlier + later)
        assert len(server.label_sets()) <= 3 and all(set(s) == {"stream_bucket"} for s in server.label_sets())
        assert sum(p.duplicates for p in server.pushes()) > 0, "the redelivered entries were re-sent"
        assert await topic_size(stack.bootstrap, dlq(stack)) == 0


async def test_401_is_fatal_and_goes_to_the_dlq(stack: Stack) -> None:
    with loki_server(required_authorization="Bearer right") as server:
        await start(stack, LOKI_URL=server.url, LOKI_BEARER_TOKEN="wrong")
        stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, messages(range(3)))
        await poll(lambda: topic_size(stack.bootstrap, dlq(stack)), lambda n: n == 3, timeout=60, what="3 in DLQ")
        dead = await read_topic(stack.bootstrap, dlq(stack))
        assert {r.headers[h.ERROR_MESSAGE] for r in dead} == {b"loki 401: unauthorized"}
        assert server.count() == 0


# --------------------------------------------------------------------------------------------------
# A real Loki


@pytest.mark.skipif(not REAL_LOKI, reason="set LOKI_URL (and LOKI_TENANT_ID, auth) to run against a real Loki")
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_every_event_exactly_once_in_a_real_loki(stack: Stack, encoding: str) -> None:
    assert REAL_LOKI
    source = f"pipeline-e2e-{stack.uid}-{encoding}"
    await start(stack, LOKI_URL=REAL_LOKI, LOKI_ENCODING=encoding)
    stack.worker()
    total = 1000
    unique = messages(range(total), source=source)
    await produce(stack.bootstrap, stack.ingest_topic, unique + unique[::5])  # with 200 duplicates

    async def count() -> list[int]:
        return await query_real_loki(REAL_LOKI, f'{{source=~"{source}-.*"}}')

    await poll(count, lambda v: len(v) >= total, timeout=120, interval=1, what=f"{total} lines in Loki")
    await poll(lambda: drained(stack), bool, timeout=60, what="delivery drained")
    ns = await count()
    assert sorted(ns) == list(range(total)), f"{len(ns)} lines, {len(set(ns))} distinct"
    assert await topic_size(stack.bootstrap, dlq(stack)) == 0


async def query_real_loki(url: str, selector: str) -> list[int]:
    settings = LokiSinkSettings(
        name="loki",
        url=url,
        tenant_id=os.environ.get("LOKI_TENANT_ID"),
        username=os.environ.get("LOKI_USERNAME"),
        password=os.environ.get("LOKI_PASSWORD"),  # type: ignore[arg-type]
        bearer_token=os.environ.get("LOKI_BEARER_TOKEN"),  # type: ignore[arg-type]
    )
    sink = LokiSink(settings)
    headers = sink._headers()
    start_ns = int((BASE - timedelta(minutes=5)).timestamp() * 1e9)
    end_ns = int(time.time() * 1e9) + 60 * 10**9
    found: list[int] = []
    async with httpx.AsyncClient(auth=sink._auth(), headers=headers, verify=sink._verify(), timeout=30) as client:
        while True:  # page forward: each page starts after the last timestamp seen
            response = await client.get(
                settings.base_url() + "/loki/api/v1/query_range",
                params={"query": selector, "start": start_ns, "end": end_ns, "limit": 5000, "direction": "forward"},
            )
            response.raise_for_status()
            results = response.json()["data"]["result"]
            values = [v for stream in results for v in stream["values"]]
            found.extend(json.loads(line)["payload"]["n"] for _, line in values)
            if len(values) < 5000:
                return found
            start_ns = max(int(ts) for ts, _ in values) + 1
