"""Breaker admin (maintenance windows): POST /admin/breakers/{sink}/reset|force-open|force-close, behind
ADMIN_TOKEN (the routes do not exist without it). Each change is logged and counted
(pipeline_breaker_admin_total{sink,action}); the override is the gauge pipeline_breaker_forced{sink}."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from aiohttp import web
from pydantic import SecretStr

from pipeline.observability import metrics
from pipeline.reliability.breaker import CircuitBreaker, Forced
from pipeline.web.auth import authorized, refuse

log = structlog.get_logger("pipeline.admin")

ACTIONS: dict[str, Forced] = {"reset": Forced.NONE, "force-open": Forced.OPEN, "force-close": Forced.CLOSED}


def routes(breakers: Mapping[str, CircuitBreaker], token: SecretStr) -> list[web.RouteDef]:
    async def change(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), token):
            return refuse(request, "admin")
        sink, action = request.match_info["sink"], request.match_info["action"]
        breaker = breakers.get(sink)
        if breaker is None or action not in ACTIONS:
            return web.json_response(
                {"error": "not found", "sinks": sorted(breakers), "actions": list(ACTIONS)}, status=404
            )
        before = breaker.state
        label = action.replace("-", "_")
        breaker.force(ACTIONS[action], f"admin {label} from {request.remote}")
        metrics.BREAKER_ADMIN.labels(sink, label).inc()
        metrics.BREAKER_FORCED.labels(sink).set(breaker.forced.value)
        log.warning(
            "circuit breaker changed by admin",
            sink=sink,
            action=label,
            before=before.value,
            after=breaker.state.value,
            client=request.remote,
        )
        return web.json_response({"sink": sink, "action": label, "before": before.value, **breaker.snapshot()})

    return [web.post(r"/admin/breakers/{sink}/{action}", change)]
