"""A real Prometheus scrapes a real worker (its web server's /metrics) while the sink breaks and recovers
through the fault proxy; everything is read back from Prometheus' HTTP API: the breaker state went to 1 and
back to 0, consumer lag and backlog age rose and fell, the alert rules loaded with health ok, and every
dashboard query (template variables filled in) runs, the core panels with data."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from pipeline.devstack.kafka import HOST, free_port
from tests import dashboard_queries as dq
from tests.e2e.conftest import Stack
from tests.e2e.test_faults import FAST, events, start, wait_delivered
from tests.faults import FaultProxy, through
from tests.prometheus_server import PrometheusServer
from tests.support import poll, produce
from tools.dashboard import CORE_PANELS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SINK = "tsdb"


async def metrics_status(port: int) -> int | None:
    """Status of GET /metrics on the worker; None while nothing listens yet."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://{HOST}:{port}/metrics")).status_code
    except httpx.HTTPError:
        return None


def scalar(prometheus: PrometheusServer, expr: str) -> Callable[[], Awaitable[float | None]]:
    """A probe for poll(): the single value of `expr` now, None while it has none."""

    async def probe() -> float | None:
        values = list((await prometheus.values(expr)).values())
        assert len(values) <= 1, (expr, values)
        return values[0] if values else None

    return probe


async def test_prometheus_sees_the_breaker_lag_and_backlog_rise_and_fall(
    stack: Stack, proxy: FaultProxy, tmp_path: Path
) -> None:
    web_port = free_port()
    web = {"WEB_ENABLED": "true", "WEB_PORT": str(web_port), "METRICS_INTERVAL_SEC": "1"}  # lag/backlog every 1 s
    await start(stack, FAST, web, TSDB_DSN=through(stack.dsn, proxy))
    worker = stack.worker()
    target = f"{HOST}:{web_port}"
    with PrometheusServer(tmp_path / "prometheus", [target]) as prometheus:
        status = await poll(lambda: metrics_status(web_port), lambda s: s is not None, timeout=60, what="web server")
        assert status == 200, f"GET /metrics gave {status}"
        began = time.time()
        # Prometheus must hold a sample from before the first write, or that write is no increase to rate()
        up = scalar(prometheus, f'up{{instance="{target}"}}')
        await poll(up, lambda v: v == 1, timeout=30, what="a first scrape of the worker")

        state = scalar(prometheus, f'mship_sink_circuit_state{{sink="{SINK}", instance="{target}"}}')
        lag = scalar(prometheus, f'sum(kafka_consumergroup_group_lag{{group="{stack.app_id}.deliver.{SINK}"}})')
        age = scalar(prometheus, f'max(pipeline_sink_backlog_age_seconds{{sink="{SINK}"}})')

        await produce(stack.bootstrap, stack.ingest_topic, events(0, 50))
        await wait_delivered(stack, 50)
        await poll(state, lambda v: v == 0, timeout=30, what="breaker closed in Prometheus")

        proxy.set("down")
        await produce(stack.bootstrap, stack.ingest_topic, events(50, 50))
        await poll(state, lambda v: v == 1, timeout=30, what="breaker open (1) in Prometheus")
        await poll(lag, lambda v: v is not None and v > 0, timeout=30, what="lag above 0 in Prometheus")
        await poll(age, lambda v: v is not None and v > 0, timeout=30, what="backlog age above 0 in Prometheus")

        proxy.set("pass")
        await wait_delivered(stack, 100)
        await poll(state, lambda v: v == 0, timeout=30, what="breaker closed again in Prometheus")
        await poll(lag, lambda v: v == 0, timeout=30, what="lag back to 0 in Prometheus")
        await poll(age, lambda v: v == 0, timeout=30, what="backlog age back to 0 in Prometheus")

        rules = await prometheus.rules()
        assert rules and all(rule["health"] == "ok" for rule in rules), [(r["name"], r["health"]) for r in rules]

        board = dq.load()
        variables = {"worker": target, "sink": SINK, "__rate_interval": "5s"}
        label, match = dq.variable_queries(board, variables)["worker"]
        assert await prometheus.label_values(label, match) == [target]
        label, match = dq.variable_queries(board, variables)["sink"]
        assert SINK in await prometheus.label_values(label, match)

        async def panels_with_data() -> set[str]:
            # A range query's steps fall on a grid of its own: the scrape that saw the last write is covered
            # only once a step lies after it, so this is polled rather than asked once
            with_data = set()
            for query in dq.panel_queries(board, variables):
                series = await prometheus.query_range(query.expr, began, time.time(), 1)
                if any(not math.isnan(float(v)) for s in series for _, v in s["values"]):
                    with_data.add(query.panel)
            return with_data

        await poll(
            panels_with_data, lambda panels: set(CORE_PANELS) <= panels, timeout=30, what="every core panel with data"
        )
    assert worker.running, worker.tail()
