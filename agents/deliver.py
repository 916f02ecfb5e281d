"""Delivery: one SinkRunner per enabled sink, run as a service of the Faust worker (started with it,
stopped with it). See pipeline.delivery.runner for why delivery uses its own consumers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from mode import Service

from agents.app import Pipeline
from pipeline.delivery.runner import SinkRunner
from pipeline.delivery.status import RunnerStatus
from pipeline.delivery.supervisor import RunnerCrashLoop, supervise
from pipeline.limits import producer_request_bytes
from pipeline.observability import metrics
from pipeline.produce import acked_producer
from pipeline.reliability.breaker import BreakerState, CircuitBreaker
from pipeline.sinks.base import Sink
from pipeline.sinks.registry import create_sink

log = structlog.get_logger("pipeline.deliver")


def on_breaker_transition(sink: str, old: BreakerState, new: BreakerState, reason: str) -> None:
    metrics.CIRCUIT_STATE.labels(sink).set(new.metric_value)
    if new is BreakerState.OPEN:
        metrics.CIRCUIT_OPENS.labels(sink).inc()
    level = log.warning if new is BreakerState.OPEN else log.info
    level("circuit breaker", sink=sink, transition=f"{old.value}->{new.value}", reason=reason)


class DeliveryService(Service):
    """Owns the producer for retry tiers and DLQs and one runner task per sink."""

    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.breakers: dict[str, CircuitBreaker] = {}
        self.sinks: dict[str, Sink] = {}  # for the health endpoints
        self.runners: dict[str, SinkRunner] = {}
        self._runner_tasks: list[asyncio.Task[None]] = []
        self._producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        settings = self.pipeline.settings
        kafka = settings.kafka
        self._producer = acked_producer(
            kafka,
            client_id=f"{kafka.client_id}-deliver",
            max_request_size=producer_request_bytes(self.pipeline.catalog),
        )
        await self._producer.start()
        for sink_settings in settings.enabled_sinks():
            breaker = CircuitBreaker(
                sink_settings.name, sink_settings.circuit_breaker, on_transition=on_breaker_transition
            )
            metrics.CIRCUIT_STATE.labels(sink_settings.name).set(0)
            metrics.BREAKER_FORCED.labels(sink_settings.name).set(0)
            self.breakers[sink_settings.name] = breaker
            self.sinks[sink_settings.name] = create_sink(sink_settings)
            runner = SinkRunner(
                sink=self.sinks[sink_settings.name],
                settings=sink_settings,
                catalog=self.pipeline.catalog,
                kafka=kafka,
                group_id=f"{settings.app_id}.deliver.{sink_settings.name}",
                producer=self._producer,
                breaker=breaker,
            )
            self.runners[sink_settings.name] = runner
            self._runner_tasks.append(
                asyncio.create_task(self._supervise(runner), name=f"deliver-{sink_settings.name}")
            )

    def statuses(self) -> dict[str, RunnerStatus]:
        """Each sink's delivery status (open state, last open error, breaker, routing), for health checks."""
        return {name: runner.status for name, runner in self.runners.items()}

    async def _supervise(self, runner: SinkRunner) -> None:
        """A runner that crashes (a bug, not a sink failure) is restarted from its committed offsets; one
        that keeps crashing stops the worker (exit non-zero) instead of leaving it alive and idle."""

        def crashed(count: int) -> None:
            runner.status.crashes = count

        try:
            await supervise(runner.name, runner.run, on_crash=crashed)
        except RunnerCrashLoop as exc:
            await self.crash(exc)

    async def on_stop(self) -> None:
        for task in self._runner_tasks:
            task.cancel()
        for task in self._runner_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._producer is not None:
            await self._producer.stop()


def register(pipeline: Pipeline) -> DeliveryService:
    service = DeliveryService(pipeline)
    pipeline.app.service(service)  # type: ignore[arg-type]
    return service
