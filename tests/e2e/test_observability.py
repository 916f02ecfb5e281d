"""The operator's view of a real worker on the real broker and PostgreSQL: /metrics with the contract's
names and bounded labels, the health endpoints through a sink outage (fault proxy), breaker admin behind
its token, POST /ingest's answers, `pipeline health`, and nothing of Faust's own web views."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import load_settings
from pipeline.observability.metrics import REGISTRY
from pipeline.topics import load_topics
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.e2e.test_faults import FAST, start
from tests.faults import FaultProxy, through
from tests.support import count_rows, poll, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ADMIN_TOKEN = "adm1n-T0ken-for-tests"
INGEST_TOKEN = "1ngest-T0ken-for-tests"
WRONG_TOKEN = "wr0ng-T0ken-for-tests"

# The metric contract shared with the dashboard and alert rules.
CONTRACT = {
    "mship_sink_retry_total": {"sink", "tier"},
    "mship_sink_error_total": {"sink", "error"},
    "mship_sink_timeout_total": {"sink"},
    "mship_sink_circuit_state": {"sink"},
    "mship_sink_circuit_open_total": {"sink"},
    "mship_sink_dlq_total": {"sink", "reason"},
    "mship_sink_write_seconds": {"sink"},
    "mship_sink_queue_size": {"sink"},
    "mship_sink_queue_bytes": {"sink"},
    "mship_queue_depth": set(),
    "mship_queue_bytes": set(),
    "pipeline_worker_info": {"version", "app_id"},
    "pipeline_ingest_events_total": set(),
    "pipeline_ingest_rejected_total": {"reason"},
    "pipeline_dedupe_duplicates_total": set(),
    "pipeline_dedupe_forwarded_total": set(),
    "pipeline_dedupe_expired_total": set(),
    "pipeline_sink_events_written_total": {"sink"},
    "pipeline_sink_batch_size": {"sink"},
    "pipeline_partition_rereads_total": {"topic"},
    "pipeline_sink_events_expired_total": {"sink"},
    "pipeline_breaker_admin_total": {"sink", "action"},
    "pipeline_breaker_forced": {"sink"},
    "kafka_consumergroup_group_lag": {"group", "topic", "partition"},
    "kafka_consumergroup_group_lag_seconds": {"group", "topic", "partition"},
    "kafka_consumergroup_group_max_lag": {"group"},
    "kafka_consumergroup_group_sum_lag": {"group"},
    "pipeline_sink_backlog_age_seconds": {"sink"},
    "pipeline_sink_retention_headroom_seconds": {"sink"},
    "pipeline_sink_retention_headroom_ratio": {"sink"},
}
# Added by the delivery refactor: required once they are registered.
CONTRACT.update(
    {
        name: {"sink"}
        for name in ("pipeline_sink_route_blocked_total", "pipeline_sink_open_failures_total")
        if name in REGISTRY._names_to_collectors
    }
)
BOUNDED_LABELS = {"sink", "tier", "error", "reason", "group", "topic", "partition", "version", "app_id", "action"}
BOUNDED_LABELS |= {"status", "le"}
HASH_LIKE = re.compile(r"[0-9a-f]{32,}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return None


def events(start: int, count: int) -> list[dict[str, object]]:
    return [event(n) for n in range(start, start + count)]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


async def test_a_worker_shows_and_lets_operate_a_sink_outage(
    stack: Stack, proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    port = free_port()
    await start(
        stack,
        FAST,
        TSDB_DSN=through(stack.dsn, proxy),
        WEB_ENABLED="true",
        WEB_PORT=str(port),
        METRICS_INTERVAL_SEC="1",
        HEALTH_TIMEOUT_SEC="1",
        ADMIN_TOKEN=ADMIN_TOKEN,
        INGEST_TOKEN=INGEST_TOKEN,
        INGEST_MAX_EVENT_BYTES="2048",
        INGEST_RATE_LIMIT_PER_SEC="0.5",
        INGEST_RATE_LIMIT_BURST="10",
    )
    worker = stack.worker()
    base = f"http://127.0.0.1:{port}"
    ingest_auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    admin_auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def get(path: str) -> httpx.Response:
        try:
            return await client.get(base + path)
        except httpx.TransportError:
            return httpx.Response(599)

    async def scrape() -> Scrape:
        return Scrape((await client.get(base + "/metrics")).text)

    async def health(path: str) -> Any:
        return (await client.get(base + path)).json()

    ready = await poll(lambda: get("/health/ready"), lambda r: r.status_code == 200, timeout=90, what="ready")
    assert ready.json()["checks"] == {"broker": True, "partitions_assigned": True, "tables_recovered": True}
    for path in ("/router/", "/table/", "/"):  # Faust's web views are not served
        assert (await get(path)).status_code == 404, path

    # POST /ingest: 401 without its token, 202 with the count, 400 per invalid event, 413 over the limit.
    batch = events(0, 20)
    assert (await client.post(base + "/ingest", json=batch)).status_code == 401
    accepted = await client.post(base + "/ingest", json=batch, headers=ingest_auth)
    assert (accepted.status_code, accepted.json()) == (202, {"accepted": 20})
    ndjson = "\n".join(json.dumps(e) for e in events(20, 2)).encode()
    accepted = await client.post(base + "/ingest", content=ndjson, headers=ingest_auth)
    assert (accepted.status_code, accepted.json()) == (202, {"accepted": 2})
    invalid = await client.post(base + "/ingest", json=[event(100), {"source": "x"}], headers=ingest_auth)
    assert invalid.status_code == 400
    assert [(e["index"], e["reason"]) for e in invalid.json()["errors"]] == [(1, "schema")]
    big = {**event(101), "payload": {"blob": "x" * 3000}}
    assert (await client.post(base + "/ingest", json=big, headers=ingest_auth)).status_code == 413
    await poll(lambda: count_rows(stack.dsn, stack.table), lambda n: n == 22, timeout=60, what="22 rows")

    # /metrics: every name of the contract, with its labels and no unbounded label value.
    metrics = await poll(
        scrape, lambda s: (s.value("pipeline_sink_events_written_total", sink="tsdb") or 0) >= 22, timeout=30
    )
    missing = [
        name for name in CONTRACT if name not in metrics.types and name.removesuffix("_total") not in metrics.types
    ]
    assert not missing, missing
    for sample in metrics.samples:
        assert set(sample.labels) <= BOUNDED_LABELS, sample
        assert not any(HASH_LIKE.search(v) for v in sample.labels.values()), sample
        base_name = re.sub(r"_(bucket|sum|count)$", "", sample.name)
        if base_name in CONTRACT:
            assert set(sample.labels) - {"le"} == CONTRACT[base_name], sample
    assert metrics.value("pipeline_worker_info", app_id=stack.app_id) == 1
    assert (metrics.value("pipeline_ingest_events_total") or 0) >= 22
    assert metrics.value("mship_sink_circuit_state", sink="tsdb") == 0
    assert metrics.value("mship_sink_retry_total", sink="tsdb", tier="1s") == 0  # made at 0 for rate()
    assert metrics.value("kafka_consumergroup_group_lag", group=f"{stack.app_id}.deliver.tsdb") is not None
    assert metrics.value("pipeline_sink_batch_size_count", sink="tsdb")

    # A sink outage: breaker open in /health/circuit-breakers and the gauge, the sink's check unhealthy,
    # a degradation level, and a backlog whose age and queue size rise.
    proxy.set("down")
    assert (await client.post(base + "/ingest", json=events(200, 10), headers=ingest_auth)).status_code == 202
    await poll(scrape, lambda s: s.value("mship_sink_circuit_state", sink="tsdb") == 1, timeout=30, what="open")
    breakers = await health("/health/circuit-breakers")
    assert breakers["open"] == ["tsdb"] and breakers["circuit_breakers"]["tsdb"]["open_count"] >= 1
    detailed = await poll(lambda: get("/health/detailed"), lambda r: r.status_code == 503, timeout=30)
    body = detailed.json()
    assert body["status"] == "unhealthy" and body["checks"]["broker"]["status"] == "healthy"
    assert body["checks"]["sink:tsdb"]["status"] == "unhealthy"
    assert {"response_time_ms", "breaker"} <= body["checks"]["sink:tsdb"].keys()
    backlog = await poll(
        scrape,
        lambda s: (
            (s.value("mship_sink_queue_size", sink="tsdb") or 0) >= 10
            and (s.value("pipeline_sink_backlog_age_seconds", sink="tsdb") or 0) > 0
        ),
        timeout=30,
        what="backlog",
    )
    assert (backlog.value("mship_queue_depth") or 0) >= 10 and (
        backlog.value("mship_sink_queue_bytes", sink="tsdb") or 0
    ) > 0
    assert 0 < (backlog.value("pipeline_sink_retention_headroom_ratio", sink="tsdb") or 0) < 1
    assert (await health("/health/degradation"))["level"] != "normal"
    broken = await asyncio.to_thread(run_cli, "health", "--url", base, env={})
    assert broken.returncode == 1 and "sink:tsdb: unhealthy" in broken.stdout, broken.stdout + broken.stderr

    proxy.set("pass")
    await poll(lambda: count_rows(stack.dsn, stack.table), lambda n: n == 32, timeout=60, what="32 rows")
    await poll(
        scrape,
        lambda s: (
            s.value("mship_sink_circuit_state", sink="tsdb") == 0
            and s.value("mship_sink_queue_size", sink="tsdb") == 0
            and s.value("pipeline_sink_backlog_age_seconds", sink="tsdb") == 0
        ),
        timeout=30,
        what="closed and drained",
    )

    # Admin: 401 without or with a wrong token (logged without it), then force-open and reset.
    url = base + "/admin/breakers/tsdb/force-open"
    assert (await client.post(url)).status_code == 401
    assert (await client.post(url, headers={"Authorization": f"Bearer {WRONG_TOKEN}"})).status_code == 401
    assert (await client.post(base + "/admin/breakers/nope/reset", headers=admin_auth)).status_code == 404
    forced = await client.post(url, headers=admin_auth)
    assert forced.status_code == 200 and forced.json()["state"] == "open" and forced.json()["forced"] == "open"
    after = await scrape()
    assert after.value("pipeline_breaker_admin_total", sink="tsdb", action="force_open") == 1
    assert after.value("pipeline_breaker_forced", sink="tsdb") == 1
    assert after.value("mship_sink_circuit_state", sink="tsdb") == 1
    reset = await client.post(base + "/admin/breakers/tsdb/reset", headers=admin_auth)
    assert reset.status_code == 200 and reset.json()["state"] == "closed"
    after = await scrape()
    assert after.value("pipeline_breaker_forced", sink="tsdb") == 0
    assert after.value("mship_sink_circuit_state", sink="tsdb") == 0
    healthy = await asyncio.to_thread(run_cli, "health", "--url", base, "--json", env={})
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert json.loads(healthy.stdout)["detailed"]["status"] == "healthy"

    # The rate limit: a burst, then 429 with Retry-After.
    statuses: list[httpx.Response] = []
    for _ in range(15):
        statuses.append(await client.post(base + "/ingest", json=[], headers=ingest_auth))
        if statuses[-1].status_code == 429:
            break
    assert statuses[-1].status_code == 429, [r.status_code for r in statuses]
    assert int(statuses[-1].headers["Retry-After"]) >= 1

    # Logs: structured JSON lines, the refusals logged, no token anywhere.
    worker.stop()
    lines = worker.log_lines()
    assert all("level" in line for line in lines), [line for line in lines if "level" not in line][:3]
    refusals = [line for line in lines if str(line.get("event", "")).startswith("request refused")]
    assert {(r["endpoint"], r["path"]) for r in refusals} >= {("admin", "/admin/breakers/tsdb/force-open")}
    assert any(line.get("event") == "circuit breaker changed by admin" for line in lines)
    text = worker.log_path.read_text()
    for token in (ADMIN_TOKEN, INGEST_TOKEN, WRONG_TOKEN):
        assert token not in text


async def test_ingest_answers_503_while_the_broker_is_unreachable(client: httpx.AsyncClient) -> None:
    from pipeline.limits import producer_request_bytes
    from pipeline.web.ingest import IngestEndpoint

    dead = free_port()  # nothing listens there
    settings = load_settings(
        environ={"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}", "INGEST_HTTP_TIMEOUT_SEC": "2"}
    )
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    endpoint = IngestEndpoint(settings, catalog.ingest.name, producer_request_bytes(catalog))
    app = web.Application()
    app.router.add_post("/ingest", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        answer = await client.post(f"http://127.0.0.1:{port}/ingest", json=event(1))
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
        assert answer.json()["accepted"] == 0
        assert (await client.post(f"http://127.0.0.1:{port}/ingest", content=b"{")).status_code == 400
    finally:
        await runner.cleanup()
        await endpoint.close()


def test_a_worker_refuses_an_open_ingest_endpoint_on_a_public_address(stack: Stack) -> None:
    result = run_cli("worker", env=stack.env(WEB_ENABLED="true", WEB_HOST="0.0.0.0"))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "INGEST_TOKEN" in result.stderr and "WEB_ALLOW_UNAUTHENTICATED" in result.stderr
