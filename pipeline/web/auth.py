"""Bearer tokens of the admin and ingest endpoints: constant-time comparison, and a 401 that is logged
without the token (the Authorization header never reaches a log line)."""

from __future__ import annotations

import hmac

import structlog
from aiohttp import web
from pydantic import SecretStr

log = structlog.get_logger("pipeline.web")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None without one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authorized(authorization: str | None, token: SecretStr | None) -> bool:
    """Whether the header carries `token`; always True when no token is configured."""
    if token is None:
        return True
    given = bearer_token(authorization)
    return given is not None and hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def refuse(request: web.Request, endpoint: str) -> web.Response:
    """401 for a missing or wrong token, logged with what was asked and by whom, never the token."""
    reason = "missing" if bearer_token(request.headers.get("Authorization")) is None else "invalid"
    log.warning(
        "request refused: bearer token " + reason,
        endpoint=endpoint,
        method=request.method,
        path=request.path,
        client=request.remote,
    )
    return web.json_response(
        {"error": "unauthorized", "reason": f"bearer token {reason}"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="pipeline"'},
    )
