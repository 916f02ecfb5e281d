"""Flow control and isolation between sinks, end to end on the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.observability.lag import topic_size
from tests.e2e.conftest import Stack
from tests.e2e.test_faults import FAST, events, fast, start, wait_delivered
from tests.faults import FaultProxy, through
from tests.http_sink_server import Script, http_sink_server
from tests.support import count_rows, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HTTP_FAST = fast("HTTP")


async def start_http_only(stack: Stack, url: str, **env: str) -> None:
    """Topics for a stack whose only sink is the HTTP sink at `url`, with fast retry settings."""
    await start(stack, HTTP_FAST, TSDB_ENABLED="false", HTTP_ENABLED="true", HTTP_URL=url, **env)


async def test_bandwidth_limit_holds_within_ten_percent_over_a_narrow_link(stack: Stack) -> None:
    limit = 64 * 1024
    script = Script()
    with http_sink_server(script) as url:
        await start_http_only(
            stack,
            url,
            HTTP_BATCH_SIZE="40",
            HTTP_FLUSH_BANDWIDTH_BYTES_PER_SEC=str(limit),
        )
        count = 2400  # about 640 KiB on the wire: ten seconds at the limit
        await produce_events(stack, count)
        stack.worker()
        await poll(
            lambda: asyncio.sleep(0, len(set(script.delivered_hashes()))),
            lambda n: n == count,
            timeout=120,
            what="all events at the HTTP sink",
        )
    with script.lock:
        received = [r for r in script.received if r.status == 200]
    assert len(received) >= 10
    # Bytes after the first request, over the time from the first to the last request.
    elapsed = received[-1].at - received[0].at
    sent = sum(r.body_bytes for r in received[1:])
    rate = sent / elapsed
    # The bucket's contract (pipeline.reliability.ratelimit): over any window at most rate * t plus one
    # second of burst (it fills while the worker starts); and the link is used, not starved.
    assert sent <= limit * elapsed + limit, f"measured {rate:.0f} B/s against a limit of {limit} B/s"
    assert rate > 0.9 * limit, f"measured {rate:.0f} B/s against a limit of {limit} B/s"
    assert len(set(script.delivered_hashes())) == count == len(script.delivered_hashes())


async def test_one_sink_down_does_not_slow_the_other(stack: Stack, proxy: FaultProxy) -> None:
    script = Script()
    with http_sink_server(script) as url:
        await start(
            stack,
            FAST,
            HTTP_FAST,
            TSDB_DSN=through(stack.dsn, proxy),
            HTTP_ENABLED="true",
            HTTP_URL=url,
        )
        stack.worker()
        await produce_events(stack, 200, start_at=0)
        await wait_delivered(stack, 200)
        await poll(lambda: asyncio.sleep(0, len(script.delivered_hashes())), lambda n: n == 200, timeout=60)

        proxy.set("down")
        started = time.monotonic()
        await produce_events(stack, 3000, start_at=200)
        await poll(
            lambda: asyncio.sleep(0, len(set(script.delivered_hashes()))),
            lambda n: n == 3200,
            timeout=60,
            what="the HTTP sink keeps flowing",
        )
        http_elapsed = time.monotonic() - started
        assert await count_rows(stack.dsn, stack.table) == 200, "nothing reaches PostgreSQL while it is down"
        assert await topic_size(stack.bootstrap, stack.sink_topic()) == 3200, "PostgreSQL's events wait in Kafka"
        proxy.set("pass")
        await wait_delivered(stack, 3200)
    # 3,000 events through the HTTP sink while PostgreSQL was down took seconds, not breaker periods.
    assert http_elapsed < 30, f"the HTTP sink took {http_elapsed:.1f}s"


async def produce_events(stack: Stack, count: int, start_at: int = 0) -> None:
    from tests.support import produce

    await produce(stack.bootstrap, stack.ingest_topic, events(start_at, count))


@pytest.mark.parametrize("cap", [1, 3])
async def test_concurrent_requests_per_sink_are_capped(stack: Stack, cap: int) -> None:
    script = Script(delay=0.3)
    with http_sink_server(script) as url:
        await start_http_only(
            stack,
            url,
            HTTP_BATCH_SIZE="10",
            HTTP_LINGER_MS="200",
            HTTP_MAX_CONCURRENT_REQUESTS=str(cap),
        )
        await produce_events(stack, 300)
        stack.worker()
        await poll(
            lambda: asyncio.sleep(0, len(script.delivered_hashes())),
            lambda n: n >= 300,
            timeout=120,
            what="all events at the HTTP sink",
        )
    assert script.max_in_flight == cap, f"at most {cap} requests in flight, saw {script.max_in_flight}"
    assert len(set(script.delivered_hashes())) == 300 == len(script.delivered_hashes())


async def test_event_rate_limit_holds_within_ten_percent(stack: Stack) -> None:
    limit = 100.0  # events per second
    script = Script()
    with http_sink_server(script) as url:
        await start_http_only(
            stack,
            url,
            HTTP_BATCH_SIZE="20",
            HTTP_MAX_EVENTS_PER_SEC=str(limit),
        )
        count = 800
        await produce_events(stack, count)
        stack.worker()
        await poll(
            lambda: asyncio.sleep(0, len(script.delivered_hashes())),
            lambda n: n >= count,
            timeout=120,
            what="all events at the HTTP sink",
        )
    with script.lock:
        received = [r for r in script.received if r.status == 200]
    elapsed = received[-1].at - received[0].at
    rate = sum(len(r.events) for r in received[1:]) / elapsed
    assert abs(rate - limit) / limit < 0.10, f"measured {rate:.1f} events/s against a limit of {limit}"
