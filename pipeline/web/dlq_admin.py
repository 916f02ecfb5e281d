"""DLQ admin on the worker's web server, behind ADMIN_TOKEN (absent without it). The same code as
`pipeline dlq` (pipeline.dlq), so a replay from here has the same exactly-once guarantee:

    GET  /admin/dlq                      stats of every DLQ (as `pipeline dlq stats --json`)
    POST /admin/dlq/{sink}/replay        body: {"error_class", "reason", "since", "until", "key", "limit",
                                         "to": "sink"|"retry", "rate", "dry_run"} (all optional)
    POST /admin/dlq/{sink}/retry         body: {"partition": P, "offset": O}: replay that one event

Errors map from the DLQ errors' kinds: unknown sink 404, bad time or body 400, nothing matched 404,
missing topic 409, a failed replay 500 (with its summary)."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from pydantic import SecretStr

from pipeline.config import Settings
from pipeline.dlq import errors
from pipeline.dlq.filters import Filter
from pipeline.dlq.replay import ReplayRequest, ReplaySummary, replay
from pipeline.dlq.stats import dlq_stats
from pipeline.dlq.timeparse import parse_time
from pipeline.topics import TopicCatalog
from pipeline.web.auth import authorized, refuse

log = structlog.get_logger("pipeline.admin")

STATUS: dict[type[errors.DlqError], int] = {
    errors.UnknownSink: 404,
    errors.BadTime: 400,
    errors.NothingMatched: 404,
    errors.MissingTopic: 409,
    errors.ReplayFailed: 500,
}
FILTER_FIELDS = ("error_class", "reason", "key")


class BadRequest(ValueError):
    pass


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _number(body: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise BadRequest(f"{name} must be a{'n integer' if kind is int else ' number'}")
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


def request_from(sink: str, body: dict[str, Any]) -> ReplayRequest:
    """A replay request from a JSON body (BadRequest or errors.BadTime when it does not hold one)."""
    unknown = set(body) - {*FILTER_FIELDS, "since", "until", "limit", "to", "rate", "dry_run", "partition", "offset"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    since, until = _text(body, "since"), _text(body, "until")
    flt = Filter(
        **{name: _text(body, name) for name in FILTER_FIELDS},
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        partition=_number(body, "partition", int),
        offset=_number(body, "offset", int),
    )
    to = body.get("to", "sink")
    if to not in ("sink", "retry"):
        raise BadRequest("to must be 'sink' or 'retry'")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false")
    return ReplayRequest(
        sink=sink, flt=flt, limit=_number(body, "limit", int), to=to, rate=_number(body, "rate", float), dry_run=dry_run
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def routes(settings: Settings, catalog: TopicCatalog, token: SecretStr) -> list[web.RouteDef]:
    async def run(request: web.Request, coordinates: bool) -> web.Response:
        if not authorized(request.headers.get("Authorization"), token):
            return refuse(request, "admin")
        sink = request.match_info["sink"]
        try:
            body = await _body(request)
            if coordinates and not (isinstance(body.get("partition"), int) and isinstance(body.get("offset"), int)):
                raise BadRequest('retry needs the event\'s coordinates: {"partition": P, "offset": O}')
            wanted = request_from(sink, body)
            if coordinates:
                wanted = ReplayRequest(sink=sink, flt=wanted.flt, limit=1, to=wanted.to, dry_run=wanted.dry_run)
            summary = await replay(settings, catalog, wanted)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except errors.DlqError as exc:
            payload: dict[str, Any] = {"error": str(exc)}
            summary_of = getattr(exc, "summary", None)
            if isinstance(summary_of, ReplaySummary):
                payload["summary"] = summary_of.as_dict()
            return web.json_response(payload, status=STATUS.get(type(exc), 500))
        log.warning(
            "dlq replayed by admin",
            sink=sink,
            filter=wanted.flt.describe(),
            dry_run=wanted.dry_run,
            resent=summary.resent,
            parked=summary.parked,
            client=request.remote,
        )
        result = summary.as_dict()
        if wanted.dry_run:
            result["would_resend"] = len(summary.planned) - summary.would_park
            result["would_park"] = summary.would_park
        return web.json_response(result)

    async def stats(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), token):
            return refuse(request, "admin")
        return web.json_response({"dlqs": [s.as_dict() for s in await dlq_stats(settings, catalog)]})

    async def replay_view(request: web.Request) -> web.Response:
        return await run(request, coordinates=False)

    async def retry_view(request: web.Request) -> web.Response:
        return await run(request, coordinates=True)

    return [
        web.get("/admin/dlq", stats),
        web.post(r"/admin/dlq/{sink}/replay", replay_view),
        web.post(r"/admin/dlq/{sink}/retry", retry_view),
    ]
