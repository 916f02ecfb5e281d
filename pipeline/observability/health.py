"""What the health endpoints and `pipeline health` report, in the seeds' shapes: checks with a status
(healthy, degraded, unhealthy) and a response time, breaker states, DLQ counts and the degradation level
(normal, minor, moderate, severe, critical). The level rules are pure (`degradation`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.observability.collector import LagCollector
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.sinks.base import Sink

LEVELS = ("normal", "minor", "moderate", "severe", "critical")
HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

# Headroom ratio (retention left for the oldest unwritten event) below which a level applies.
HEADROOM_LEVELS = ((0.02, 4), (0.10, 3), (0.25, 2), (0.50, 1))


@dataclass(frozen=True)
class Degradation:
    level: str
    value: int
    reasons: list[str]


def degradation(open_breakers: int, sinks: int, min_headroom_ratio: float | None) -> Degradation:
    """The seeds' level from the share of sinks whose breaker is not closed (any: minor; half or more:
    moderate; all: severe) and from the least retention headroom of any sink (below 50%: minor, 25%:
    moderate, 10%: severe, 2%: critical, i.e. retention is about to delete undelivered events)."""
    value = 0
    reasons: list[str] = []
    if sinks and open_breakers:
        share = open_breakers / sinks
        value = 3 if share >= 1 else 2 if share >= 0.5 else 1
        reasons.append(f"{open_breakers} of {sinks} sink breaker(s) not closed")
    if min_headroom_ratio is not None:
        for limit, level in HEADROOM_LEVELS:
            if min_headroom_ratio < limit:
                value = max(value, level)
                reasons.append(f"retention headroom {min_headroom_ratio:.0%} (below {limit:.0%})")
                break
    return Degradation(LEVELS[value], value, reasons)


def overall(statuses: list[str]) -> str:
    if UNHEALTHY in statuses:
        return UNHEALTHY
    return DEGRADED if DEGRADED in statuses else HEALTHY


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def timed(check: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> dict[str, Any]:
    """Run one check: its fields plus `status` and `response_time_ms`; a timeout or error is unhealthy."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            result = dict(await check())
        status = HEALTHY if result.get("ok", True) else UNHEALTHY
    except TimeoutError:
        result, status = {"ok": False, "error": f"no answer within {timeout:g}s"}, UNHEALTHY
    except Exception as exc:
        result, status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}, UNHEALTHY
    result.setdefault("status", status)
    result["response_time_ms"] = round((time.monotonic() - started) * 1000, 2)
    return result


@dataclass
class WorkerState:
    """What readiness needs from the Faust app, set by its signals."""

    assigned: bool = False  # the group gave this worker its partitions at least once
    recovered: Callable[[], bool] = field(default=lambda: True)  # tables recovered from their changelogs


class HealthReport:
    """Builds every health body from the live breakers, sinks, collector and worker state."""

    def __init__(
        self,
        *,
        breakers: Mapping[str, CircuitBreaker],
        sinks: Mapping[str, Sink],
        collector: LagCollector,
        worker: WorkerState,
        timeout: float,
    ) -> None:
        self.breakers = breakers
        self.sinks = sinks
        self.collector = collector
        self.worker = worker
        self.timeout = timeout

    def broker_fresh(self) -> bool:
        """The collector reached the broker in its last round, and that round is recent."""
        snap = self.collector.snapshot
        stale_after = 3 * self.collector.interval + self.collector.timeout
        return snap.ok and time.time() - snap.at < stale_after

    def live(self) -> dict[str, Any]:
        return {"status": "alive", "timestamp": _now()}

    def ready(self) -> dict[str, Any]:
        checks = {
            "broker": self.broker_fresh(),
            "partitions_assigned": self.worker.assigned,
            "tables_recovered": self.worker.recovered(),
        }
        return {"status": "ready" if all(checks.values()) else "not_ready", "checks": checks, "timestamp": _now()}

    async def detailed(self) -> dict[str, Any]:
        names = sorted(self.sinks)
        results = await asyncio.gather(
            timed(self.collector.ping, self.timeout),
            *(timed(self.sinks[name].health, self.timeout) for name in names),
        )
        checks: dict[str, dict[str, Any]] = {"broker": results[0]}
        for name, result in zip(names, results[1:], strict=True):
            breaker = self.breakers.get(name)
            state = breaker.state if breaker is not None else BreakerState.CLOSED
            result["breaker"] = state.value
            if result["status"] == HEALTHY and state is not BreakerState.CLOSED:
                result["status"] = DEGRADED
            checks[f"sink:{name}"] = result
        statuses = [c["status"] for c in checks.values()]
        status = overall(statuses)
        return {
            "status": status,
            "overall_status": status,
            "checks": checks,
            "summary": {
                "total_checks": len(statuses),
                "healthy": statuses.count(HEALTHY),
                "degraded": statuses.count(DEGRADED),
                "unhealthy": statuses.count(UNHEALTHY),
            },
            "degradation": self.degradation()["level"],
            "timestamp": _now(),
        }

    def circuit_breakers(self) -> dict[str, Any]:
        snaps = {name: breaker.snapshot() for name, breaker in sorted(self.breakers.items())}
        not_closed = [name for name, snap in snaps.items() if snap["state"] != BreakerState.CLOSED.value]
        return {
            "status": DEGRADED if not_closed else HEALTHY,
            "open": not_closed,
            "circuit_breakers": snaps,
            "timestamp": _now(),
        }

    def dlq(self) -> dict[str, Any]:
        snap = self.collector.snapshot
        queues = [
            {"topic": topic, "sink": self.collector.dlqs.get(topic), "messages": count}
            for topic, count in sorted(snap.dlq.items())
        ]
        total = sum(q["messages"] for q in queues)  # type: ignore[misc]
        return {
            "status": "unknown" if not snap.ok else "messages" if total else "empty",
            "total_messages": total,
            "queues": queues,
            "collected_at": snap.at or None,
            "timestamp": _now(),
        }

    def degradation(self) -> dict[str, Any]:
        not_closed = sum(1 for b in self.breakers.values() if b.state is not BreakerState.CLOSED)
        snap = self.collector.snapshot
        ratios = {name: b.headroom_ratio for name, b in snap.sinks.items()}
        lowest = min(ratios.values()) if snap.ok and ratios else None
        level = degradation(not_closed, len(self.breakers), lowest)
        return {
            "level": level.level,
            "level_value": level.value,
            "levels": list(LEVELS),
            "reasons": level.reasons,
            "open_breakers": not_closed,
            "sinks": len(self.breakers),
            "retention_headroom_ratio": ratios,
            "backlog_age_seconds": {name: b.age_sec for name, b in snap.sinks.items()},
            "timestamp": _now(),
        }
