"""A real Prometheus (tests/prometheus_server.py) loads the alert rules with health ok, runs every dashboard
query with the template variables filled in, and scrapes a target the way the e2e test reads a worker.
Needs no worker and no broker: the TSDB holds only what the test's own metrics endpoint serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from pipeline.devstack.kafka import HOST, free_port
from tests import dashboard_queries as dq
from tests.prometheus_server import PrometheusServer
from tests.support import poll
from tests.test_alerts import alerts

pytestmark = pytest.mark.timeout(120)

VARIABLES = {"worker": ".*", "sink": ".*", "__rate_interval": "5s"}


class Target:
    """A metrics endpoint of the test's own, with a breaker gauge named as the workers name it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.state = Gauge("mship_sink_circuit_state", "breaker state", ["sink"], registry=self.registry)
        self.info = Gauge("pipeline_worker_info", "worker", ["version", "app_id"], registry=self.registry)
        self.info.labels("0.1.0", "test").set(1)
        self.state.labels("tsdb").set(0)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr=HOST, registry=self.registry)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.server.shutdown()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, target: Target) -> Iterator[PrometheusServer]:
    with PrometheusServer(Path(tmp_path_factory.mktemp("prometheus")), [target.address]) as server:
        yield server


async def test_alert_rules_load_with_health_ok(prometheus: PrometheusServer) -> None:
    rules = await poll(
        prometheus.rules,
        lambda rs: bool(rs) and all(r["health"] == "ok" for r in rs),
        timeout=20,
        what="every rule evaluated with health ok",
    )
    assert {r["name"] for r in rules if r["type"] == "alerting"} == set(alerts())


async def test_every_dashboard_query_runs(prometheus: PrometheusServer) -> None:
    board = dq.load()
    queries = dq.panel_queries(board, VARIABLES)
    assert len(queries) >= len(dq.panels(board))
    for query in queries:
        await prometheus.query(query.expr)  # raises PrometheusError with Prometheus' message on a bad query
    for label, match in dq.variable_queries(board, VARIABLES).values():
        await prometheus.label_values(label, match)


async def test_a_bad_query_is_reported(prometheus: PrometheusServer) -> None:
    with pytest.raises(AssertionError, match="bad_data"):
        await prometheus.query("sum by (sink (rate(x[5s]))")


async def test_scraped_values_are_read_back(prometheus: PrometheusServer, target: Target) -> None:
    query = 'mship_sink_circuit_state{sink="tsdb", job="pipeline"}'
    await poll(lambda: prometheus.values(query), lambda v: list(v.values()) == [0.0], timeout=20, what="state 0")
    target.state.labels("tsdb").set(1)
    await poll(lambda: prometheus.values(query), lambda v: list(v.values()) == [1.0], timeout=20, what="state 1")
    board = dq.load()
    label, match = dq.variable_queries(board, VARIABLES)["worker"]
    assert await prometheus.label_values(label, match) == [target.address]
    label, match = dq.variable_queries(board, {**VARIABLES, "worker": target.address})["sink"]
    assert await prometheus.label_values(label, match) == ["tsdb"]
    breaker = next(q for q in dq.panel_queries(board, VARIABLES) if q.panel == "Breaker state per sink")
    assert await prometheus.values(breaker.expr) == {"sink=tsdb": 1.0}
