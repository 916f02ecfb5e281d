"""The worker's one web server (aiohttp, in place of Faust's, whose /router/ and /table/ views reveal
dedupe keys): GET /metrics, /health/live, /health/ready, /health/detailed, /health/circuit-breakers,
/health/dlq, /health/degradation; POST /admin/breakers/{sink}/{action} (with ADMIN_TOKEN) and
POST /ingest (INGEST_HTTP_ENABLED). Nothing else is served.

`WebService` runs it as a service of the Faust worker, with the metrics collector
(pipeline.observability.collector) as its background task."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config import Settings
from pipeline.limits import producer_request_bytes
from pipeline.observability import metrics
from pipeline.observability.collector import LagCollector
from pipeline.observability.health import UNHEALTHY, HealthReport, WorkerState
from pipeline.reliability.breaker import CircuitBreaker
from pipeline.sinks.base import Sink
from pipeline.topics import TopicCatalog
from pipeline.web import admin, dlq_admin
from pipeline.web.ingest import IngestEndpoint

log = structlog.get_logger("pipeline.web")


def bind_problem(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port (checked before the worker joins its groups: a
    second worker on the same WEB_PORT used to take partitions, force a rebalance, then die), or None."""
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"web_host (env WEB_HOST) {host!r} does not resolve: {exc.strerror}"
    family, kind, proto, _, where = address
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(where)
        except OSError as exc:
            return (
                f"web_port (env WEB_PORT) {port} on {host} is not free ({exc.strerror}): another worker or "
                "program listens there; give each worker on a host its own WEB_PORT"
            )
    return None


def package_version() -> str:
    try:
        return version("pipeline")
    except PackageNotFoundError:
        return "unknown"


def _json(body: Callable[[], dict[str, Any]], *, failing: Callable[[dict[str, Any]], bool]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        payload = body()
        return web.json_response(payload, status=503 if failing(payload) else 200)

    return handler


def build_web_app(
    settings: Settings, report: HealthReport, ingest: IngestEndpoint | None, catalog: TopicCatalog | None = None
) -> web.Application:
    app = web.Application(client_max_size=settings.ingest_http_max_request_bytes)

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def detailed(request: web.Request) -> web.Response:
        payload = await report.detailed()
        return web.json_response(payload, status=503 if payload["status"] == UNHEALTHY else 200)

    app.router.add_routes(
        [
            web.get("/metrics", metrics_view),
            web.get("/health/live", _json(report.live, failing=lambda _: False)),
            web.get("/health/ready", _json(report.ready, failing=lambda p: p["status"] != "ready")),
            web.get("/health/detailed", detailed),
            web.get("/health/circuit-breakers", _json(report.circuit_breakers, failing=lambda _: False)),
            web.get("/health/dlq", _json(report.dlq, failing=lambda _: False)),
            web.get("/health/degradation", _json(report.degradation, failing=lambda _: False)),
        ]
    )
    if settings.admin_token is not None:
        app.router.add_routes(admin.routes(report.breakers, settings.admin_token))
        if catalog is not None:
            app.router.add_routes(dlq_admin.routes(settings, catalog, settings.admin_token))
    if ingest is not None:
        app.router.add_post("/ingest", ingest.handle)
    return app


class WebService(Service):
    """The web server and the metrics collector of one worker."""

    def __init__(
        self,
        settings: Settings,
        report: HealthReport,
        ingest: IngestEndpoint | None,
        tiers: Mapping[str, list[str]] | None = None,
        catalog: TopicCatalog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.catalog = catalog
        self.tiers = dict(tiers or {})  # sink -> its retry tiers' labels, for the series made at 0
        self.settings = settings
        self.report = report
        self.ingest = ingest
        self._runner: web.AppRunner | None = None
        self._collector_task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        settings = self.settings
        metrics.WORKER_INFO.labels(package_version(), settings.app_id).set(1)
        for name, tiers in self.tiers.items():
            metrics.init_sink(name, tiers)
        if not settings.web_enabled:
            return  # nothing would read the collector's values
        self._collector_task = asyncio.create_task(self.report.collector.run(), name="metrics-collector")
        runner = web.AppRunner(build_web_app(settings, self.report, self.ingest, self.catalog), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.web_host, settings.web_port, reuse_address=True)
        await site.start()
        self._runner = runner
        log.info(
            "web server listening",
            host=settings.web_host,
            port=settings.web_port,
            admin=settings.admin_token is not None,
            ingest=self.ingest is not None,
        )

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.ingest is not None:
            await self.ingest.close()
        task, self._collector_task = self._collector_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def attach(
    app: Any,
    settings: Settings,
    catalog: TopicCatalog,
    breakers: Mapping[str, CircuitBreaker],
    sinks: Mapping[str, Sink],
) -> WebService:
    """Add the web server and the collector to a Faust app. `breakers` and `sinks` are the delivery
    service's live mappings (filled when it starts)."""
    state = WorkerState()

    def recovered() -> bool:
        completed = getattr(getattr(getattr(app, "tables", None), "recovery", None), "completed", None)
        return completed is None or bool(completed.is_set())

    state.recovered = recovered

    @app.on_partitions_assigned.connect  # type: ignore[untyped-decorator]
    async def _assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        state.assigned = True

    report = HealthReport(
        breakers=breakers,
        sinks=sinks,
        collector=LagCollector.for_app(settings, catalog),
        worker=state,
        timeout=settings.health_timeout_sec,
    )
    ingest = None
    if settings.ingest_http_enabled:
        ingest = IngestEndpoint(settings, catalog.ingest.name, producer_request_bytes(catalog))
    tiers = {
        s.name: [t.tier or str(i) for i, t in enumerate(catalog.sink_retry(s.name))] for s in settings.enabled_sinks()
    }
    service = WebService(settings, report, ingest, tiers, catalog)
    app.service(service)
    return service
