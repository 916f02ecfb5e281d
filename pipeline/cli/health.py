"""`pipeline health`: a worker's health from its web server (/health/detailed, /health/ready,
/health/circuit-breakers, /health/dlq, /health/degradation), printed, with the exit status of a probe:
0 healthy, 2 degraded (a breaker not closed, or a sink check degraded), 1 unhealthy or unreachable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import typer

from pipeline.cli.common import ConfigOption, settings_or_exit

EX_UNHEALTHY, EX_DEGRADED = 1, 2
ENDPOINTS = ("detailed", "ready", "circuit-breakers", "dlq", "degradation")


def default_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


def fetch_health(url: str, timeout: float) -> dict[str, Any]:
    """Every health body of the worker at `url`, by endpoint name."""
    bodies: dict[str, Any] = {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
        for name in ENDPOINTS:
            bodies[name] = client.get(f"/health/{name}").json()
    return bodies


def exit_status(bodies: dict[str, Any]) -> int:
    status = bodies["detailed"].get("status")
    if status == "unhealthy" or bodies["ready"].get("status") != "ready":
        return EX_UNHEALTHY
    return EX_DEGRADED if status == "degraded" else 0


def render(bodies: dict[str, Any]) -> list[str]:
    detailed, ready = bodies["detailed"], bodies["ready"]
    lines = [
        f"status: {detailed.get('status')}  ready: {ready.get('status')}  "
        f"degradation: {bodies['degradation'].get('level')}"
    ]
    for name, ok in ready.get("checks", {}).items():
        lines.append(f"  ready.{name}: {'yes' if ok else 'NO'}")
    for name, check in detailed.get("checks", {}).items():
        extra = f" breaker={check['breaker']}" if "breaker" in check else ""
        error = f" error={check['error']}" if check.get("error") else ""
        lines.append(f"  {name}: {check.get('status')} ({check.get('response_time_ms')} ms){extra}{error}")
    for reason in bodies["degradation"].get("reasons", []):
        lines.append(f"  degradation: {reason}")
    dlq = bodies["dlq"]
    lines.append(f"  dlq: {dlq.get('total_messages')} message(s)")
    for queue in dlq.get("queues", []):
        if queue.get("messages"):
            lines.append(f"    {queue['topic']}: {queue['messages']}")
    return lines


def health(
    config: Path | None = ConfigOption,
    url: str | None = typer.Option(None, "--url", help="The worker's web server (default: WEB_HOST:WEB_PORT)."),
    as_json: bool = typer.Option(False, "--json", help="Print the endpoints' JSON bodies as one object."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per request."),
) -> None:
    """Print a worker's health; exit 0 healthy, 2 degraded, 1 unhealthy or unreachable."""
    if url is None:
        settings, _ = settings_or_exit(config)
        url = default_url(settings.web_host, settings.web_port)
    try:
        bodies = fetch_health(url, timeout)
    except (httpx.HTTPError, ValueError) as exc:
        typer.echo(f"error: cannot read the health of {url}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EX_UNHEALTHY) from None
    if as_json:
        typer.echo(json.dumps(bodies, indent=2))
    else:
        typer.echo("\n".join(render(bodies)))
    raise typer.Exit(exit_status(bodies))
