"""The sink contract: what every sink type implements, the record it receives, and the errors it raises.

A sink writes a batch idempotently (the event hash identifies an event; writing it twice has the effect
of writing it once) and never retries by itself: it raises a `SinkError` subclass that says whether the
failure is worth retrying. Retrying, breaking the circuit and dead-lettering are done by the delivery
machinery around the sink, the same for every sink type.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.sinks.settings import SinkSettings


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One event as a sink sees it: its hash and its canonical JSON body (see pipeline.events)."""

    event_hash: str
    body: bytes


class SinkError(Exception):
    """Base of every failure a sink reports."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableSinkError(SinkError):
    """The sink may accept the same batch later: connection lost, timeout, overload, 5xx, 429."""

    retryable = True


class SinkTimeout(RetryableSinkError):
    pass


class SinkUnavailable(RetryableSinkError):
    pass


class FatalSinkError(SinkError):
    """The sink will never accept this batch as it is: bad data, constraint, permission, other 4xx."""

    retryable = False


class Sink(abc.ABC):
    """Built by the registry as `SinkClass(settings)` where settings is the type's SinkSettings model."""

    name: str
    #: Whether `health` asks the sink itself (a query, its readiness endpoint). Delivery then uses it as a
    #: breaker probe when a half-open breaker has no events to try: without one, an idle sink that came
    #: back would stay half-open (and the worker "severe") until the next event.
    health_probes_sink: bool = False

    def __init__(self, settings: SinkSettings) -> None:
        self.name = settings.name

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and prepare (create tables, check endpoints). May raise RetryableSinkError."""

    @abc.abstractmethod
    async def write(self, batch: list[SinkRecord]) -> int:
        """Write the batch idempotently; return how many events were new to the sink."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Must not raise."""

    def wire_size(self, batch: list[SinkRecord]) -> int:
        """Bytes this batch takes on the wire, for the bandwidth limit. Sinks that wrap or encode the
        events override it; the default is the size of the canonical bodies."""
        return sum(len(record.body) for record in batch)

    async def health(self) -> dict[str, Any]:
        """A cheap check for health endpoints."""
        return {"sink": self.name, "ok": True}
